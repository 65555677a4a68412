"""TensorRT: real builds where TensorRT and a GPU exist, a clear refusal everywhere else."""

from __future__ import annotations

import json

import pytest
from export_helpers import SAMPLE_DATA, copy_bundle
from typer.testing import CliRunner

from nseg_export.cli import app

runner = CliRunner()


def _trt_missing() -> str | None:
    from nseg_export.trt import TrtUnavailable, require_trt

    try:
        require_trt()
    except TrtUnavailable as e:
        return str(e)
    return None


MISSING = _trt_missing()
needs_trt = pytest.mark.skipif(MISSING is not None, reason=f"TensorRT unavailable: {MISSING}")


@pytest.mark.skipif(MISSING is None, reason="TensorRT and a GPU are present; the refusal path cannot be reached")
def test_trt_command_refuses_clearly_without_tensorrt_or_gpu(unet_bundle, tmp_path):
    bundle = copy_bundle(unet_bundle, tmp_path / "b")
    before = (bundle / "metadata.json").read_text()
    res = runner.invoke(app, ["trt", str(bundle), "--fp16"])
    assert res.exit_code == 2
    assert "TensorRT engine not built" in res.output
    assert ("tensorrt" in res.output and "not installed" in res.output) or "no CUDA GPU" in res.output
    assert (bundle / "metadata.json").read_text() == before
    assert not list(bundle.glob("*.engine"))


@pytest.mark.skipif(MISSING is None, reason="TensorRT and a GPU are present")
def test_parity_with_engine_fails_without_tensorrt(unet_ckpt, unet_bundle, tmp_path):
    res = runner.invoke(app, ["parity", str(unet_ckpt), str(unet_bundle), "--max-images", "0",
                              "--engine", str(tmp_path / "x.engine"), "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 2 and "--engine" in res.output and "cannot be checked" in res.output


def test_int8_without_calibration_images_is_refused(unet_bundle):
    res = runner.invoke(app, ["trt", str(unet_bundle), "--int8"])
    assert res.exit_code == 1 and "--calib" in res.output


def test_profile_covers_the_runtime_tile_shapes(unet_bundle, maskrcnn_bundle):
    from nseg_infer.engine.tiling import tile_grid

    from nseg_export.metadata import read_metadata
    from nseg_export.trt import bundle_profile

    meta = read_metadata(unet_bundle)
    p = bundle_profile(meta)
    assert p.opt == p.max == (4, 3, 128, 128)
    t = meta["tiling"]
    # Every tile shape the runtime can ask for (small images get one small tile) lies inside the profile.
    for h, w in [(1, 1), (5, 300), (96, 96), (1000, 37)]:
        th, tw = tile_grid(h, w, t["tile"], t["halo"], meta["preprocessing"]["size_divisor"]).tile_shape
        assert p.min[2] <= th <= p.max[2] and p.min[3] <= tw <= p.max[3]
    assert bundle_profile(read_metadata(maskrcnn_bundle)).min == (1, 3, 64, 64)


@pytest.mark.trt
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_unet_engine_builds_passes_parity_and_is_registered(unet_bundle, tmp_path, precision):
    from nseg_infer.engine.bundle import load_bundle

    bundle = copy_bundle(unet_bundle, tmp_path / "b")
    args = ["trt", str(bundle), "--data", str(SAMPLE_DATA), "--max-images", "2"]
    res = runner.invoke(app, args + (["--fp16"] if precision == "fp16" else []))
    assert res.exit_code == 0, res.output
    meta = json.loads((bundle / "metadata.json").read_text())
    (e,) = meta["engines"]
    assert e["precision"] == precision and e["tensorrt"] and e["gpu"] and (bundle / e["file"]).is_file()
    assert e["profiles"][0]["opt"] == [4, 3, 128, 128]
    assert load_bundle(bundle).engine_paths()


@pytest.mark.trt
@needs_trt
def test_unet_int8_engine_with_real_calibration(tmp_path):
    from nseg_infer.engine.bundle import default_bundle_path, load_bundle

    # The shipped, trained UNet: calibrated on real images its INT8 engine must pass parity (an
    # untrained test model could fail it honestly, which would prove nothing about calibration).
    bundle = copy_bundle(default_bundle_path(), tmp_path / "b")
    res = runner.invoke(app, ["trt", str(bundle), "--int8", "--calib", str(SAMPLE_DATA), "--data", str(SAMPLE_DATA),
                              "--max-images", "2"])
    assert res.exit_code == 0, res.output
    rep = json.loads(next(bundle.glob("*.parity.json")).read_text())
    assert rep["passed"] and rep["targets"][0]["tolerance"]["name"] == "trt-int8", rep
    (e,) = json.loads((bundle / "metadata.json").read_text())["engines"]
    assert e["precision"] == "int8" and (bundle / e["file"]).is_file()
    assert list(bundle.glob("calib.*.cache"))  # calibration really ran (and is cached for rebuilds)
    assert load_bundle(bundle).engine_paths()


@pytest.mark.trt
@needs_trt
def test_maskrcnn_engine_builds_and_handles_zero_detections(maskrcnn_bundle, tmp_path):
    bundle = copy_bundle(maskrcnn_bundle, tmp_path / "b")
    res = runner.invoke(app, ["trt", str(bundle)])
    assert res.exit_code == 0, res.output
    rep = json.loads(next(bundle.glob("*.parity.json")).read_text())
    blank = next(i for i in rep["targets"][0]["instances"] if i["case"] == "blank")
    assert blank["n_ref"] == blank["n_test"] == 0
