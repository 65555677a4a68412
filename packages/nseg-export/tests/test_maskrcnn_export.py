from __future__ import annotations

import json

import numpy as np
import onnx
from export_helpers import SAMPLE_DATA, copy_bundle, perturb_weights
from nseg_infer.engine.bundle import load_bundle, sha256_file
from typer.testing import CliRunner

from nseg_export.cli import app
from nseg_export.onnx_export import TRT_UNSUPPORTED_OPS, graph_ops
from nseg_export.parity import TOLERANCES, compare_detections, run_parity

runner = CliRunner()


def test_bundle_is_tensorrt_buildable_and_described(maskrcnn_bundle):
    model = onnx.load(str(maskrcnn_bundle / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert not graph_ops(model) & TRT_UNSUPPORTED_OPS  # no Loop / sequence ops: mask pasting stayed outside
    b = load_bundle(maskrcnn_bundle)
    meta = json.loads((maskrcnn_bundle / "metadata.json").read_text())
    assert b.kind == "maskrcnn" and meta["sha256"] == sha256_file(maskrcnn_bundle / "model.onnx")
    assert meta["inputs"][0]["shape"] == [1, 3, 64, 64]
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "masks"]
    assert meta["outputs"][2]["shape"] == ["detections", 1, 28, 28]
    assert meta["postprocessing"] == {"kind": "maskrcnn", "score_threshold": 0.5, "mask_threshold": 0.5,
                                      "nms_threshold": 0.3, "min_size": 4}
    assert meta["tiling"] == {"tile": 64, "halo": 8, "batch": 1}
    assert meta["training"]["config"]["maskrcnn"]["backbone"] == "resnet18_fpn"


def test_zero_detections_then_a_normal_tile_on_one_session(maskrcnn_ckpt, maskrcnn_bundle):
    import torch
    from nseg_infer.engine.backends import OrtBackend
    from nseg_train.checkpoint import load_model
    from nseg_train.datasets import normalize_for
    from nseg_train.deploy import TorchBackend

    from nseg_export.parity import blob_image

    model, cfg, _ = load_model(maskrcnn_ckpt)
    ort_run = OrtBackend(load_bundle(maskrcnn_bundle), ["CPUExecutionProvider"]).run
    torch_run = TorchBackend(model, torch.device("cpu"), kind="maskrcnn").run

    def tile(img):
        return np.ascontiguousarray(normalize_for(cfg, img).transpose(2, 0, 1)[None])

    blank = tile(np.full((64, 64, 3), 30, np.uint8))
    blobs = tile(blob_image(np.random.default_rng(0), 64, 64))
    empty = ort_run(blank)
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,) and empty["masks"].shape == (0, 1, 28, 28)
    after = ort_run(blobs)
    assert len(after["scores"]) >= 1
    checks = compare_detections("after-blank", torch_run(blobs), after, TOLERANCES["fp32"], 0.5)
    assert all(c.passed for c in checks), checks
    assert ort_run(blank)["boxes"].shape == (0, 4)


def test_parity_passes_including_blank_tile(maskrcnn_ckpt, maskrcnn_bundle, tmp_path):
    report = tmp_path / "p.json"
    res = runner.invoke(app, ["parity", str(maskrcnn_ckpt), str(maskrcnn_bundle), "--data", str(SAMPLE_DATA),
                              "--max-images", "1", "--report", str(report)])
    assert res.exit_code == 0, res.output
    rep = json.loads(report.read_text())
    (t,) = rep["targets"]
    assert t["passed"] and t["tolerance"]["atol"] == 1e-5
    blank = next(i for i in t["instances"] if i["case"] == "blank")
    assert blank["n_ref"] == blank["n_test"] == 0
    assert any(i["n_ref"] > 0 for i in t["instances"])
    assert t["summary"]["min_f1"] >= 0.99
    # The runtime's tiled path: an image of several tiles with halos, compared tile by tile.
    big = [c for c in t["tensors"] if c["case"].startswith("blobs:96x88#tile")]
    assert len({c["case"] for c in big}) >= 4


def test_perturbed_weights_fail_parity(maskrcnn_ckpt, maskrcnn_bundle, tmp_path):
    bad = copy_bundle(maskrcnn_bundle, tmp_path / "bad")
    perturb_weights(bad, scale=0.5)
    rep = run_parity(maskrcnn_ckpt, bad, max_images=0)
    assert not rep.passed
    assert any("onnxruntime:fp32" in f for f in rep.failures())


def test_detection_comparison_catches_moved_and_missing_detections():
    tol = TOLERANCES["fp32"]
    ref = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), "scores": np.array([0.9, 0.8], np.float32),
           "masks": np.full((2, 1, 28, 28), 0.7, np.float32)}
    same = {k: v.copy() for k, v in ref.items()}
    assert all(c.passed for c in compare_detections("c", ref, same, tol, 0.5))
    moved = {k: v.copy() for k, v in ref.items()}
    moved["boxes"][1] += 1.0
    assert not all(c.passed for c in compare_detections("c", ref, moved, tol, 0.5))
    missing = {k: v[:1] for k, v in ref.items()}
    assert not compare_detections("c", ref, missing, tol, 0.5)[0].passed
    # A detection at the graph's score threshold may legitimately be dropped by the other side.
    border = {k: v.copy() for k, v in ref.items()}
    border["scores"][1] = 0.5
    assert compare_detections("c", border, {k: v[:1] for k, v in border.items()}, tol, 0.5)[0].passed
