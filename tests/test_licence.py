"""The licence and the citation: one BSD-3-Clause LICENSE, declared by every package, and a
CITATION.cff that credits the Data Science Bowl 2018 paper and its CC0 data set, and every other
data set the default model was trained on."""

from __future__ import annotations

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
    # Every data set the default model learnt from, as its bioimage.io package cites them, is
    # credited here too.
    citations = pytest.importorskip("nseg_export.bioimageio_export", reason="nseg-export is not installed").citations
    from nseg_infer.engine.bundle import default_bundle_path, load_bundle

    dois = [c["doi"] for c in citations(load_bundle(default_bundle_path())) if "doi" in c]
    assert len(dois) > 1 and all(d in by_doi for d in dois), dois
