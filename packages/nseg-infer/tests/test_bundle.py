from __future__ import annotations

import json
import shutil

import pytest
from infer_testkit import write_bundle

from nseg_infer.engine import bundle as bundle_mod
from nseg_infer.engine.bundle import BundleError, load_bundle


@pytest.fixture()
def bdir(tmp_path):
    return write_bundle(tmp_path / "b")


def _edit(bdir, fn):
    meta_file = bdir / "metadata.json"
    meta = json.loads(meta_file.read_text())
    fn(meta)
    meta_file.write_text(json.dumps(meta))
    return meta_file


def test_valid_bundle_loads(bdir):
    b = load_bundle(bdir)
    assert b.kind == "unet" and b.tiling.tile == 128 and b.tiling.halo == 24
    assert b.outputs[0].channels == ("foreground", "distance")
    assert b.preprocessing.normalization.high_percentile == 99.8
    assert dict(b.postprocessing)["min_size"] == 12
    assert load_bundle(bdir / "metadata.json").path == bdir
    with pytest.raises(TypeError):
        b.postprocessing["min_size"] = 3  # shared by every file of a batch: read-only


@pytest.mark.parametrize("key", ["tiling", "sha256", "kind", "outputs"])
def test_missing_key_names_file_and_key(bdir, key):
    meta_file = _edit(bdir, lambda m: m.pop(key))
    with pytest.raises(BundleError) as e:
        load_bundle(bdir)
    assert str(meta_file) in str(e.value) and key in str(e.value)


@pytest.mark.parametrize(("edit", "words"), [
    (lambda m: m.update(format="nseg-bundle/9"), "unsupported format"),
    (lambda m: m.update(kind="yolo"), "kind"),
    (lambda m: m["tiling"].update(halo=64), "halo"),
    (lambda m: m["preprocessing"].update(size_divisor=0), "size_divisor"),
    (lambda m: m.update(inputs=[]), "inputs"),
])
def test_wrong_content_is_rejected(bdir, edit, words):
    meta_file = _edit(bdir, edit)
    with pytest.raises(BundleError) as e:
        load_bundle(bdir)
    assert str(meta_file) in str(e.value) and words in str(e.value)


def test_sha256_mismatch_names_the_model(bdir):
    with open(bdir / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="sha256 mismatch") as e:
        load_bundle(bdir)
    assert str(bdir / "model.onnx") in str(e.value)
    assert load_bundle(bdir, verify_sha256=False).kind == "unet"


def test_bad_json_missing_model_missing_folder(bdir, tmp_path):
    (bdir / "metadata.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bdir)
    other = write_bundle(tmp_path / "c")
    (other / "model.onnx").unlink()
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(other)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")
    shutil.rmtree(other)
    (tmp_path / "c").mkdir()
    with pytest.raises(BundleError, match=r"metadata\.json"):
        load_bundle(tmp_path / "c")


def test_missing_default_bundle_tells_user_to_pass_model(monkeypatch, tmp_path):
    monkeypatch.setattr(bundle_mod, "default_bundle_path", lambda: tmp_path / "default")
    with pytest.raises(BundleError, match="--model"):
        load_bundle(None)


def test_default_bundle_path_is_inside_the_package():
    p = bundle_mod.default_bundle_path()
    assert p.parts[-3:] == ("nseg_infer", "assets", "default")


def test_training_scale_is_optional_and_validated(bdir):
    assert load_bundle(bdir).scale.nucleus_diameter_px is None  # absent: unknown
    _edit(bdir, lambda m: m.update(scale={"nucleus_diameter_px": 19.28, "pixel_size_um": 0.5}))
    s = load_bundle(bdir).scale
    assert (s.nucleus_diameter_px, s.pixel_size_um) == (19.28, 0.5)
    meta_file = _edit(bdir, lambda m: m.update(scale={"nucleus_diameter_px": -3}))
    with pytest.raises(BundleError) as e:
        load_bundle(bdir)
    assert str(meta_file) in str(e.value) and "nucleus_diameter_px" in str(e.value)


def test_packaged_bundle_names_resolve_and_unknown_names_fail(tmp_path, monkeypatch):
    from nseg_infer.engine.bundle import PACKAGED, default_bundle_path, packaged_bundle_path

    assert load_bundle("default").path == default_bundle_path()
    assert packaged_bundle_path("maskrcnn").parent == default_bundle_path().parent
    assert set(PACKAGED) == {"default", "maskrcnn"}
    # A folder of that name in the working directory wins over the packaged one.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    with pytest.raises(BundleError, match=r"metadata\.json"):
        load_bundle("default")
    with pytest.raises(BundleError, match="not found"):
        load_bundle("nonexistent-model")
