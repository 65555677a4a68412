"""`nseg-export bioimageio`: the default UNet as a bioimage.io package (spec 0.5) that the
runtime runs with nseg's whole pipeline, and that bioimageio.core's test_model passes offline
(where the `bioimageio` extra is installed)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from export_helpers import SAMPLE_DATA
from typer.testing import CliRunner

from nseg_export.bioimageio_export import BioimageioExportError, build_package

FLUO = SAMPLE_DATA / "693bc64581275f04fc456da74f031d583733360a1f6032fa38b3fbf592ff4352"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The default bundle packaged through the command line, as a user makes it."""
    from nseg_export.cli import app

    out = tmp_path_factory.mktemp("bioimageio") / "nseg-default.zip"
    res = CliRunner().invoke(app, ["bioimageio", "default", "--out", str(out), "--name", "nseg default UNet"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(autouse=True)
def _user_cache(tmp_path, monkeypatch):
    # Packages loaded here unpack into the test's own default cache folder, never the user's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))


def _rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def test_package_describes_the_bundle(package):
    from nseg_infer.engine.bundle import load_bundle, sha256_file

    bundle = load_bundle(None)
    rdf = _rdf(package)
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        readme = z.read("README.md").decode()
        cover = z.read("cover.png")
        test_in = np.load(z.open("test_input.npy"))
        test_out = np.load(z.open("test_output.npy"))
    assert {"rdf.yaml", "model.onnx", "test_input.npy", "test_output.npy", "cover.png", "README.md"} <= names
    assert rdf["type"] == "model" and rdf["format_version"].startswith("0.5.") and rdf["name"] == "nseg default UNet"
    assert rdf["weights"]["onnx"]["sha256"] == sha256_file(bundle.model_path)
    inp, out = rdf["inputs"][0], rdf["outputs"][0]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert inp["axes"][1]["channel_names"] == ["red", "green", "blue"]
    assert out["axes"][1]["channel_names"] == list(bundle.outputs[0].channels) == ["foreground", "distance"]
    norm = bundle.preprocessing.normalization
    assert inp["preprocessing"] == [{"id": "scale_range", "kwargs": {
        "axes": ["channel", "y", "x"], "min_percentile": norm.low_percentile, "max_percentile": norm.high_percentile}}]
    assert rdf["config"]["nseg"]["bundle"]["postprocessing"] == dict(bundle.postprocessing)
    assert rdf["license"] == "BSD-3-Clause" and any(c.get("doi") == "10.1038/s41592-019-0612-7" for c in rdf["cite"])
    assert "BBBC038" in rdf["training_data"]["name"] and rdf["config"]["nseg"]["metrics"]["val_dsb"] > 0.5
    # The documentation says how labels are made, with this bundle's own thresholds.
    pp = bundle.postprocessing
    assert "watershed" in readme and f"`foreground > {pp['fg_threshold']}`" in readme
    assert f"under {pp['min_size']} pixels" in readme
    assert cover[:8] == b"\x89PNG\r\n\x1a\n"
    # The test tensors: a real image's pixels in, the bundle's own field for them out.
    from nseg_infer.engine.predictor import Predictor, RunConfig
    from nseg_infer.sources.imageio import read_image

    img = read_image(next((FLUO / "images").glob("*.png")))[..., :3]
    assert test_in.shape == (1, 3, 256, 256) and test_out.shape == (1, 2, 256, 256)
    np.testing.assert_array_equal(test_in[0].transpose(1, 2, 0), img[:256, :256])
    # nseg's own pipeline on the crop as one untiled 256 px tile (no halo, no padding) is the same call.
    (field,) = Predictor(bundle, RunConfig(tile=256, overlap=0)).probabilities(img[:256, :256]).fields
    np.testing.assert_allclose(test_out[0], field, atol=1e-5)


def test_run_model_zip_gives_the_bundles_labels(package, tmp_path):
    from nseg_infer.runners.cli import app

    img = next((FLUO / "images").glob("*.png"))
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as z:
        z.extractall(unpacked)
    runs = {}
    for name, model in (("zip", package), ("folder", unpacked), ("bundle", "default")):
        res = CliRunner().invoke(app, ["run", str(img), "--out", str(tmp_path / name), "--model", str(model),
                                       "--products", "labels,csv"])
        assert res.exit_code == 0, res.output
        runs[name] = (tmp_path / name / f"{img.stem}.csv").read_text()
    assert runs["bundle"].count("\n") > 20
    assert runs["zip"] == runs["folder"] == runs["bundle"]


def test_maskrcnn_is_refused(tmp_path):
    with pytest.raises(BioimageioExportError, match=r"Mask R-CNN bundle cannot be a bioimage\.io model"):
        build_package("maskrcnn", tmp_path / "m.zip")
    assert not (tmp_path / "m.zip").exists()


def test_bioimageio_core_test_model_passes_offline(package, tmp_path):
    pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed (nseg-export[bioimageio] extra)")
    from nseg_export.bioimageio_export import run_test_model, validate

    assert validate(package).startswith("valid bioimage.io model")
    passed, report = run_test_model(package)
    assert passed, report
    # A package whose test output is not the model's (hash updated, so only inference can tell) fails.
    bad = tmp_path / "bad"
    with zipfile.ZipFile(package) as z:
        z.extractall(bad)
    out = np.load(bad / "test_output.npy")
    np.save(bad / "test_output.npy", out + np.float32(0.1))
    from nseg_infer.engine.bundle import sha256_file

    rdf = yaml.safe_load((bad / "rdf.yaml").read_text())
    rdf["outputs"][0]["test_tensor"]["sha256"] = sha256_file(bad / "test_output.npy")
    (bad / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    passed, report = run_test_model(bad)
    assert not passed and "elements disagree with expected values" in report


def test_package_refuses_an_image_too_small_for_the_test_tensor(tmp_path):
    from PIL import Image

    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((100, 120), np.uint8)).save(small)
    with pytest.raises(BioimageioExportError, match=r"small\.png: 100x120 px"):
        build_package(None, tmp_path / "p.zip", _opts(images=(small,)))


def _opts(**kw):
    from nseg_export.bioimageio_export import PackageOptions

    return PackageOptions(**kw)


def test_metadata_is_plain_json(package):
    # What the runtime reads back must survive YAML untouched (numbers, nested sections).
    from nseg_infer.engine.bundle import load_bundle

    meta = _rdf(package)["config"]["nseg"]["bundle"]
    assert json.loads(json.dumps(meta)) == meta
    assert "engines" not in meta and meta["model_file"] == "model.onnx"
    assert dict(load_bundle(package).postprocessing) == meta["postprocessing"]


def test_a_multi_source_models_package_cites_every_source():
    from types import SimpleNamespace

    from nseg_export.bioimageio_export import CITATIONS, citations

    tnbc = {"name": "tnbc", "licence": "CC-BY-4.0", "citation": "Naylor et al. IEEE TMI 2019. doi:10.1109/TMI.2018.2865709"}
    plain = {"name": "lab", "licence": "CC-BY-4.0", "citation": "A lab's own images, no DOI"}
    bundle = SimpleNamespace(metadata={"training": {"data_sources": [{"name": "dsb2018"}, tnbc, plain]}})
    cites = citations(bundle)
    assert cites[: len(CITATIONS)] == [dict(c) for c in CITATIONS]
    assert cites[len(CITATIONS):] == [{"text": tnbc["citation"], "doi": "10.1109/TMI.2018.2865709"}]
    assert citations(SimpleNamespace(metadata={})) == [dict(c) for c in CITATIONS]
