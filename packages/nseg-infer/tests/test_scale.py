"""Rescaling to the model's training scale and labels back at the input's size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from infer_testkit import f1_and_counts, same_partition, synthetic_blobs
from nseg_data.errors import DataError

from nseg_infer.engine.bundle import default_bundle_path, load_bundle
from nseg_infer.engine.predictor import Predictor
from nseg_infer.regions import ArraySource, Window
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import FileRunner, segment_source
from nseg_infer.sources.options import InputOptions
from nseg_infer.sources.scale import RescaledSource, check_diameter, labels_to_input, rescale_for

P = Path("x.tif")


def test_factor_rules():
    def factor(d, p, *, model_d=20.0, model_p=0.5):
        return rescale_for(P, model_diameter_px=model_d, model_pixel_size_um=model_p, diameter=d, pixel_size_um=p)

    assert factor(40, None).factor == 0.5
    assert factor(None, (0.25, 0.25)).factor == 0.5
    assert factor(10, (0.25, 0.25)).factor == 2.0  # diameter wins
    assert factor(None, (0.25, 0.25), model_p=None).identity
    assert factor(20.1, None).identity  # within 1%
    with pytest.raises(ValueError, match=r"training scale; m/metadata\.json has no"):
        check_diameter(30, None, Path("m/metadata.json"))
    check_diameter(30, 20.0, Path("m/metadata.json"))  # a model that records it: accepted
    with pytest.raises(DataError, match="outside"):
        factor(1000, None)


def test_shrinking_averages_and_window_reads_equal_the_whole():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 1000, (60, 84, 2)).astype(np.uint16)
    half = RescaledSource(ArraySource(a), (30, 42)).read_all()
    ref = a.astype(np.float64).reshape(30, 2, 42, 2, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(half, ref, rtol=1e-5)
    for shape in ((23, 37), (150, 171)):  # uneven shrink, enlarge
        src = RescaledSource(ArraySource(a), shape)
        whole = src.read_all()
        assert whole.shape == (*shape, 2)
        win = Window(5, shape[0] - 3, 7, shape[1] - 2)
        np.testing.assert_array_equal(src.read(win), whole[win.slices])
        assert abs(float(whole.mean()) - float(a.mean())) < 0.02 * float(a.mean())


def test_labels_back_at_input_size_are_renumbered():
    model = np.zeros((10, 10), np.uint32)
    model[1:5, 1:5] = 7
    model[6:9, 6:9] = 3
    model[0, 9] = 9  # one model pixel: lost when the input is smaller
    out = np.zeros((5, 5), np.uint32)
    n, scores = labels_to_input(model, out, np.arange(1, 10, dtype=np.float32) / 10)
    assert n == 2 and set(np.unique(out)) == {0, 1, 2}
    assert out[1, 1] == 2 and out[3, 3] == 1  # 3 -> 1, 7 -> 2, in label order
    np.testing.assert_allclose(scores, [0.3, 0.7])
    big = np.zeros((20, 20), np.uint32)
    labels_to_input(model, big)
    assert same_partition(big[::2, ::2], model, min_nuclei=3)


def test_diameter_rescales_and_returns_input_sized_labels(unet_bundle, tmp_path):
    meta = json.loads((unet_bundle / "metadata.json").read_text())
    meta["scale"] = {"nucleus_diameter_px": 14.0}
    b = tmp_path / "scaled"
    b.mkdir()
    (b / "model.onnx").write_bytes((unet_bundle / "model.onnx").read_bytes())
    (b / "metadata.json").write_text(json.dumps(meta))
    img, gt = synthetic_blobs((200, 240), 50, seed=3, rmin=6, rmax=8)
    big = np.kron(img, np.ones((2, 2), np.uint8))  # nuclei twice the model's size
    gt2 = np.kron(gt, np.ones((2, 2), np.uint32))
    p = Predictor(b)
    with segment_source(p, ArraySource(big), InputOptions(diameter=28.0)) as seg:
        assert seg.rescale.factor == pytest.approx(0.5)
        assert seg.labels.shape == big.shape and seg.max_label == int(seg.labels.max())
        f1, n_gt, n_pred = f1_and_counts(gt2, np.asarray(seg.labels))
    assert f1 > 0.9 and abs(n_pred - n_gt) <= 3
    with pytest.raises(ValueError, match="training scale"):
        FileRunner(Predictor(unet_bundle), FileConfig(InputOptions(diameter=20)))


def test_default_bundle_records_its_training_scale():
    """The default was trained with images of nuclei under 14 px enlarged: it measures each image."""
    s = load_bundle(default_bundle_path(), verify_sha256=False).scale
    assert s.min_nucleus_diameter_px == 14.0
    assert s.pixel_size_um is None  # the DSB images carry no pixel size


def test_cli_refuses_diameter_without_training_scale_before_any_image(unet_bundle, tmp_path):
    """`run` and `watch` refuse `--diameter` for a model without a recorded nucleus diameter at
    start-up (exit 2, one error line), not once per image."""
    from PIL import Image
    from typer.testing import CliRunner

    from nseg_infer.runners.cli import app

    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(synthetic_blobs((64, 64), 5, seed=1)[0]).save(inp / "a.png")
    expected = (f"error: --diameter needs a model that records its training scale; {unet_bundle / 'metadata.json'} "
                "has no 'scale': {'nucleus_diameter_px': ...}")
    for args in (["run", str(inp / "a.png")], ["watch", str(inp), "--once"]):
        out = tmp_path / args[0]
        res = CliRunner().invoke(app, [*args, "--out", str(out), "--model", str(unet_bundle), "--device", "cpu",
                                       "--diameter", "20"])
        assert res.exit_code == 2, res.output
        assert expected in " ".join(res.output.split()), res.output
        assert not (out / "a.labels.tif").exists()
