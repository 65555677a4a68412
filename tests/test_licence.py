"""The licence and the citation: one BSD-3-Clause LICENSE, declared by every package, and a
CITATION.cff that credits the Data Science Bowl 2018 paper and its CC0 data set, and every other
data set the default model was trained on."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nseg-data", "nseg-infer", "nseg-train", "nseg-export")


def test_license_file_and_package_metadata_agree():
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")
    for pkg in PACKAGES:
        project = tomllib.loads((ROOT / "packages" / pkg / "pyproject.toml").read_text())["project"]
        assert project.get("license") == "BSD-3-Clause", pkg


def test_citation_credits_the_data():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "BSD-3-Clause"
    by_doi = {r["doi"]: r for r in cff["references"] if "doi" in r}
    assert by_doi["10.1038/s41592-019-0612-7"]["journal"] == "Nature Methods"
    (data,) = [r for r in cff["references"] if r["type"] == "data"]
    assert data["license"] == "CC0-1.0" and "BBBC038" in data["title"]
    # The default UNet also learnt from two CC BY 4.0 sets, which must be cited wherever it is shared.
    meta = json.loads((ROOT / "packages/nseg-infer/src/nseg_infer/assets/default/metadata.json").read_text())
    for source in meta["training"].get("data_sources", []):
        if source["licence"] != "CC0-1.0":
            doi = re.search(r"doi:\s*(10\.[^\s,;]+[^\s,;.])", source["citation"]).group(1)
            assert by_doi[doi]["license"] == "CC-BY-4.0", source["name"]
