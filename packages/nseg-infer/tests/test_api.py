"""`from nseg_infer import segment`: arrays and files in, labels and the CSV's rows out."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from infer_testkit import f1_and_counts, synthetic_blobs

from nseg_infer import Segmentation, segment
from nseg_infer.engine.predictor import Predictor
from nseg_infer.sinks.measure import COLUMNS


def test_segment_array_matches_the_predictor(unet_bundle):
    img, gt = synthetic_blobs((160, 200), 30, seed=8)
    res = segment(img, model=unet_bundle, device="cpu")
    assert isinstance(res, Segmentation) and res.labels.shape == img.shape and res.labels.dtype == np.uint32
    np.testing.assert_array_equal(res.labels, Predictor(unet_bundle).predict(img).labels)
    assert res.columns == COLUMNS and res.n_nuclei == int(res.labels.max())
    assert res.rescale_factor == 1.0 and res.pixel_size_um is None
    assert {r["image"] for r in res.measurements} == {"<array>"}
    f1, _, _ = f1_and_counts(gt, res.labels)
    assert f1 > 0.9


def test_segment_file_and_channel_stack(unet_bundle, tmp_path):
    img, _ = synthetic_blobs((120, 140), 20, seed=9)
    stack = np.stack([np.zeros_like(img), img])
    p = tmp_path / "plate.ome.tif"
    tifffile.imwrite(p, stack, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    res = segment(p, model=unet_bundle, channel=1)
    assert res.pixel_size_um == pytest.approx((0.2, 0.2)) and res.info.channel_axis == "C"
    assert res.n_nuclei >= 15 and "area_um2" in res.columns and "mean_intensity_ch1" in res.columns
    assert {r["image"] for r in res.measurements} == {"plate"}
    arr = segment(stack, model=unet_bundle, channel_axis=0, channel=1, pixel_size=0.2, name="plate")
    np.testing.assert_array_equal(arr.labels, res.labels)
    assert arr.measurements == res.measurements
    from nseg_data.errors import DataError

    with pytest.raises(DataError, match="2 channels found"):
        segment(stack, model=unet_bundle, channel_axis=0)


def test_importing_the_package_stays_light():
    code = ("import sys, nseg_infer; assert 'onnxruntime' not in sys.modules and 'nseg_infer.runners.api' not in sys.modules;"
            "from nseg_infer import segment; assert callable(segment) and 'nseg_infer.runners.api' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_errors_name_the_apis_keywords_and_the_callers_axes(unet_bundle, tmp_path):
    from nseg_data.errors import DataError

    img, _ = synthetic_blobs((64, 80), 5, seed=1)
    stack = np.stack([img, img // 2, img // 3])
    with pytest.raises(DataError, match=r"3 channels found \(axes CYX \(C=3 Y=64 X=80\)\).*channel=N.*channels=\(R,G,B\)") as e:
        segment(stack, model=unet_bundle, channel_axis=0)
    assert "--channel" not in str(e.value)
    with pytest.raises(DataError, match=r"axes YXC \(Y=64 X=80 C=3\)"):  # channels last, as given
        segment(np.moveaxis(stack, 0, -1), model=unet_bundle, channel_axis=-1)
    with pytest.raises(DataError, match=r"channel=3: channel 3 does not exist.*0 to 2 \(axes CYX"):
        segment(stack, model=unet_bundle, channel_axis=0, channel=3)
    with pytest.raises(ValueError, match=r"not HxW or HxWx3: .*channel_axis="):
        segment(np.zeros((64, 80, 6), np.uint8), model=unet_bundle)
    assert segment(stack, model=unet_bundle, channel_axis=0, channel=0).info.axes == "CYX"
    # The command line keeps its own words.
    from typer.testing import CliRunner

    from nseg_infer.runners.cli import app

    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "CYX"})
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), "--model", str(unet_bundle)])
    assert res.exit_code != 0 and "choose the nuclear channel with --channel N" in res.output
