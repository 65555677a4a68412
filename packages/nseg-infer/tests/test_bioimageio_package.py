"""bioimage.io packages as models of the runtime: zip or folder, read with YAML, run on ONNX Runtime
(no bioimageio.core, no torch); the bad ones refused naming the package and the problem.
Packages here are made by hand from the test bundle; nseg-export's tests make real ones."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from infer_testkit import synthetic_blobs

from nseg_infer.engine.bundle import BundleError, load_bundle
from nseg_infer.engine.predictor import Predictor


def _rdf(meta: dict, **over) -> dict:
    norm = meta["preprocessing"]["normalization"]
    rdf = {"format_version": "0.5.4", "type": "model", "name": "t",
           "inputs": [{"id": "image", "preprocessing": [{"id": "scale_range", "kwargs": {
               "axes": ["channel", "y", "x"], "min_percentile": norm.get("low_percentile", 1.0),
               "max_percentile": norm.get("high_percentile", 99.8)}}]}],
           "weights": {"onnx": {"source": meta["model_file"], "sha256": meta["sha256"], "opset_version": 17}},
           "config": {"nseg": {"format": "nseg-bioimageio/1", "bundle": meta}}}
    rdf.update(over)
    return rdf


def _package(bundle: Path, out: Path, rdf: dict | None = None, *, weights: bytes | None = None) -> Path:
    meta = json.loads((bundle / "metadata.json").read_text())
    files = {"rdf.yaml": yaml.safe_dump(rdf if rdf is not None else _rdf(meta)).encode(),
             "model.onnx": weights if weights is not None else (bundle / "model.onnx").read_bytes()}
    if out.suffix == ".zip":
        with zipfile.ZipFile(out, "w") as z:
            for k, v in files.items():
                z.writestr(k, v)
    else:
        out.mkdir()
        for k, v in files.items():
            (out / k).write_bytes(v)
    return out


@pytest.fixture(autouse=True)
def _user_cache(tmp_path, monkeypatch):
    # The default cache folder of a test run is its own, never the user's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))


@pytest.mark.parametrize("form", ["model.zip", "unpacked"])
def test_package_runs_like_its_bundle(unet_bundle, tmp_path, form):
    pkg = _package(unet_bundle, tmp_path / form)
    b = load_bundle(pkg, cache_dir=tmp_path / "cache")
    assert b.path == pkg and b.kind == "unet" and b.model_path.is_file()
    img, _ = synthetic_blobs((150, 170), 20, seed=3)
    got = Predictor(b).predict(img).labels
    want = Predictor(unet_bundle).predict(img).labels
    assert got.max() >= 10
    np.testing.assert_array_equal(got, want)
    if form == "model.zip":  # unpacked once into the cache, named by the zip's hash
        assert len(list((tmp_path / "cache" / "bioimageio").iterdir())) == 1
        assert load_bundle(pkg, cache_dir=tmp_path / "cache").model_path == b.model_path


def test_a_zip_is_unpacked_where_told_else_in_the_user_cache_folder(unet_bundle, tmp_path, monkeypatch):
    """The cache folder is an argument; no environment variable of nseg's moves it."""
    from nseg_infer.engine.bioimageio_package import default_cache_dir

    pkg = _package(unet_bundle, tmp_path / "model.zip")
    monkeypatch.setenv("NSEG_CACHE_DIR", str(tmp_path / "ignored"))
    told = load_bundle(pkg, cache_dir=tmp_path / "told")
    assert told.model_path.is_relative_to(tmp_path / "told" / "bioimageio")
    default = Predictor(pkg).bundle  # a path: loaded with the default cache folder
    assert default_cache_dir() == tmp_path / "user-cache" / "nseg"
    assert default.model_path.is_relative_to(default_cache_dir() / "bioimageio")
    assert not (tmp_path / "ignored").exists()


def test_bad_packages_are_refused_naming_the_problem(unet_bundle, tmp_path):
    meta = json.loads((unet_bundle / "metadata.json").read_text())
    not_zip = tmp_path / "broken.zip"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match=r"broken\.zip: not a readable zip"):
        load_bundle(not_zip)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("README.md", "x")
    with pytest.raises(BundleError, match=r"empty\.zip: not a bioimage.io package: no rdf.yaml"):
        load_bundle(empty)
    foreign = _rdf(meta)
    del foreign["config"]
    with pytest.raises(BundleError, match="no 'config: nseg' section"):
        load_bundle(_package(unet_bundle, tmp_path / "foreign.zip", foreign))
    edited = _rdf(meta)
    edited["inputs"][0]["preprocessing"][0]["kwargs"]["max_percentile"] = 99.0
    with pytest.raises(BundleError, match=r"percentiles .* differ"):
        load_bundle(_package(unet_bundle, tmp_path / "edited", edited))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(_package(unet_bundle, tmp_path / "tampered.zip", weights=b"other weights"))
    escaping = _rdf({**meta, "model_file": "../model.onnx"})
    with pytest.raises(BundleError, match="plain file name"):
        load_bundle(_package(unet_bundle, tmp_path / "escape.zip", escaping))
    with pytest.raises(BundleError, match="type 'dataset', not a model"):
        load_bundle(_package(unet_bundle, tmp_path / "dataset", _rdf(meta, type="dataset")))
