from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from export_helpers import SAMPLE_DATA, copy_bundle, perturb_weights, read_report, set_meta
from nseg_infer.engine.bundle import BundleError, load_bundle, sha256_file
from typer.testing import CliRunner

from nseg_export.cli import app
from nseg_export.metadata import REQUIRED_KEYS
from nseg_export.parity import TOLERANCES, check_metadata, compare_arrays, compare_instances, run_parity

runner = CliRunner()


def test_bundle_passes_checker_and_has_the_contracted_metadata(unet_bundle, unet_ckpt):
    import torch

    onnx.checker.check_model(str(unet_bundle / "model.onnx"), full_check=True)
    onnx.checker.check_model(str(unet_bundle / "model.fp16.onnx"), full_check=True)
    meta = json.loads((unet_bundle / "metadata.json").read_text())
    assert not set(REQUIRED_KEYS) - set(meta)
    assert meta["format"] == "nseg-bundle/1" and meta["kind"] == "unet" and meta["model_file"] == "model.onnx"
    assert meta["sha256"] == sha256_file(unet_bundle / "model.onnx")
    assert meta["variants"][0]["sha256"] == sha256_file(unet_bundle / "model.fp16.onnx")
    ckpt = torch.load(unet_ckpt, weights_only=False)
    assert meta["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"],
                               "dynamic_axes": {"0": "batch", "2": "height", "3": "width"}}]
    assert meta["outputs"][0]["name"] == "probs" and meta["outputs"][0]["channels"] == ["foreground", "distance"]
    assert meta["preprocessing"] == {"channel_order": "RGB", "layout": "NCHW", "size_divisor": 4,
                                     "normalization": {"kind": "percentile", "low_percentile": 1.0,
                                                       "high_percentile": 99.8}}
    assert meta["tiling"] == {"tile": 128, "halo": 16, "batch": 4}
    assert meta["postprocessing"] == {"kind": "unet_watershed", "fg_threshold": 0.5, "seed_threshold": 0.5,
                                      "min_seed_area": 3, "min_size": 8}
    assert meta["training"]["splits_sha256"] == ckpt["splits_sha256"]
    assert meta["training"]["config"]["model"]["channels"] == [8, 16, 32]
    assert meta["metrics"]["val_dsb"] == 0.5
    assert meta["versions"]["opset"] == 17 and meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["onnx"] == onnx.__version__
    assert meta["engines"] == []
    # The graph itself declares the dynamic axes, not only the metadata.
    dims = onnx.load(str(unet_bundle / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]


def test_runtime_reader_accepts_the_bundle(unet_bundle):
    b = load_bundle(unet_bundle)
    assert b.kind == "unet" and b.model_path.name == "model.onnx"
    assert b.tiling.tile == 128 and b.tiling.halo == 16 and b.preprocessing.size_divisor == 4
    assert b.outputs[0].channels == ("foreground", "distance")


def test_graph_runs_any_batch_and_size(unet_bundle):
    import onnxruntime as ort

    s = ort.InferenceSession(str(unet_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(3, 3, 40, 72), (1, 3, 128, 128)]:
        out = s.run(None, {"image": np.random.default_rng(1).normal(size=shape).astype(np.float32)})[0]
        assert out.shape == (shape[0], 2, *shape[2:])
        assert out.min() >= 0.0 and out.max() <= 1.0  # sigmoid is in the graph



def test_parity_labels_are_predicts_on_an_image_of_many_blocks(unet_bundle):
    """Parity's labels are the instance step on the very fields it compares; on an image larger than
    one instance block they are still exactly `predict`'s (per-block fields, the margin rule, the
    blocks pasted in order), so parity checks what `nseg-infer run` computes at every size."""
    from nseg_infer.engine.predictor import Predictor, RunConfig

    from nseg_export.parity import blob_image, runtime_outputs

    p = Predictor(unet_bundle, RunConfig(device="cpu", tile=128, block=128, margin=32))
    img = blob_image(np.random.default_rng(5), 300, 420)
    fields, labels = runtime_outputs(p, img)
    assert len(fields.fields) == len(fields.plan.blocks) == 12
    expected = p.predict(img).labels
    assert expected.max() > 5
    np.testing.assert_array_equal(labels, expected)

def test_parity_cli_passes_on_real_and_random_inputs(unet_ckpt, unet_bundle, tmp_path):
    report = tmp_path / "parity.json"
    res = runner.invoke(app, ["parity", str(unet_ckpt), str(unet_bundle), "--data", str(SAMPLE_DATA),
                              "--max-images", "2", "--report", str(report)])
    assert res.exit_code == 0, res.output
    rep = read_report(report)
    assert rep["passed"] and not rep["failures"]
    assert sum(c.startswith("data:") for c in rep["cases"]) == 2
    assert {"random:1x64x64", "random:2x256x320", "random:1x512x512", "random:2x76x132"} <= set(rep["cases"])
    fp32, fp16 = rep["targets"]
    assert fp32["tolerance"]["rtol"] == 1e-3 and fp32["tolerance"]["atol"] == 1e-5
    assert fp32["summary"]["max_abs"] <= 1e-5 and fp32["summary"]["min_f1"] >= 0.99
    assert all(i["n_ref"] == i["n_test"] for i in fp32["instances"])
    assert any(i["n_ref"] > 0 for i in fp32["instances"])  # the instance check compared actual nuclei
    assert fp16["tolerance"]["atol"] > fp32["tolerance"]["atol"] and fp16["passed"]
    assert fp16["summary"]["max_abs"] > fp32["summary"]["max_abs"]  # it really ran the fp16 graph


def test_perturbed_weights_fail_parity(unet_ckpt, unet_bundle, tmp_path):
    bad = copy_bundle(unet_bundle, tmp_path / "bad")
    perturb_weights(bad)
    load_bundle(bad)  # still a well-formed, correctly signed bundle...
    res = runner.invoke(app, ["parity", str(unet_ckpt), str(bad), "--max-images", "0"])
    assert res.exit_code == 1, res.output  # ...which parity exposes
    rep = read_report(bad / "parity.json")
    assert not rep["passed"]
    assert any("max abs" in f and "onnxruntime:fp32" in f for f in rep["failures"])


def test_wrong_sha_fails_parity_with_the_reason(unet_ckpt, unet_bundle, tmp_path):
    bad = copy_bundle(unet_bundle, tmp_path / "badsha")
    set_meta(bad, sha256="0" * 64)
    with pytest.raises(BundleError):
        load_bundle(bad)
    res = runner.invoke(app, ["parity", str(unet_ckpt), str(bad), "--max-images", "0"])
    assert res.exit_code == 1
    assert "sha256 mismatch" in res.output


def test_metadata_that_disagrees_with_the_checkpoint_is_reported(unet_ckpt, unet_bundle):
    from nseg_train.checkpoint import load_model

    _, cfg, ckpt = load_model(unet_ckpt)
    meta = json.loads((unet_bundle / "metadata.json").read_text())
    assert check_metadata(meta, cfg, ckpt) == []
    meta["postprocessing"]["fg_threshold"] = 0.3
    meta["preprocessing"]["normalization"]["high_percentile"] = 99.0
    meta["training"]["splits_sha256"] = "f" * 64
    errs = check_metadata(meta, cfg, ckpt)
    assert len(errs) == 3 and any("normalisation" in e for e in errs)


def test_onnx_cli_with_simplify(unet_ckpt, tmp_path):
    out = tmp_path / "b"
    res = runner.invoke(app, ["onnx", str(unet_ckpt), "--out", str(out), "--simplify", "--batch", "2"])
    assert res.exit_code == 0, res.output
    b = load_bundle(out)
    assert b.metadata["simplified"] == "onnxslim" and b.tiling.batch == 2
    onnx.checker.check_model(str(out / "model.onnx"))


def test_the_seed_setup_exports_and_its_bundle_segments_as_validation_does(tmp_path):
    """unet-paper (scale_range, resize to 512, connected components): the bundle says so, and the
    runtime's Python API segments an image as training's validation does (the same Predictor over torch)."""
    import torch
    from conftest import disc_sample, make_unet_checkpoint
    from nseg_data.sample import Modality, Sample
    from nseg_infer import segment
    from nseg_train.checkpoint import load_model
    from nseg_train.config import load_config
    from nseg_train.tasks import TASKS

    ckpt = make_unet_checkpoint(tmp_path / "paper.pt", cfg=load_config("unet-paper"))
    res = runner.invoke(app, ["onnx", str(ckpt), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert meta["preprocessing"]["resize"] == 512 and meta["preprocessing"]["normalization"]["kind"] == "scale_range"
    assert meta["postprocessing"] == {"kind": "components", "fg_threshold": 0.5, "min_size": 0}
    assert meta["outputs"][0]["channels"] == ["foreground"]
    model, cfg, ckpt_dict = load_model(ckpt)
    assert check_metadata(meta, cfg, ckpt_dict) == []
    image, _ = disc_sample(np.random.default_rng(3), 90, 120, 5)
    val = TASKS["unet"](cfg).predict(model, Sample("s", image, None, Modality.FLUORESCENCE, "synthetic"), cfg, torch.device("cpu"))
    run = segment(image, model=tmp_path / "b", device="cpu").labels
    assert val.shape == run.shape == (90, 120)
    check = compare_instances("seed", val, run, min_f1=0.99)
    assert check.passed and check.n_ref == check.n_test > 0, check


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["onnx", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "does not exist" in res.output
    rep = run_parity(tmp_path / "nope.pt", tmp_path / "b")
    assert not rep.passed and rep.errors
    # Paths outside the working directory are recorded by name only: a report names no machine's folders.
    assert (rep.checkpoint, rep.bundle) == ("nope.pt", "b")


def test_compare_arrays_applies_allclose_rule():
    tol = TOLERANCES["fp32"]
    ref = np.array([1.0, 0.5, 0.0], np.float32)
    assert compare_arrays("c", "o", ref, ref + 5e-6, rtol=tol.rtol, atol=tol.atol).passed
    bad = compare_arrays("c", "o", ref, ref + np.array([0, 0, 2e-5], np.float32), rtol=tol.rtol, atol=tol.atol)
    assert not bad.passed and bad.violations == 1
    assert not compare_arrays("c", "o", ref, np.array([1.0, np.nan, 0.0]), rtol=1, atol=1).passed
    assert not compare_arrays("c", "o", ref, ref[:2], rtol=1, atol=1).passed


@pytest.mark.parametrize("kind", ["unet", "maskrcnn"])
def test_the_bundle_carries_the_sections_validation_runs(kind, request):
    """Export writes nseg_train.deploy's one description of the deployment, which validation's
    in-memory bundle is built from too."""
    from nseg_train.checkpoint import load_model
    from nseg_train.deploy import deployment_sections, in_memory_bundle

    bundle, ckpt = request.getfixturevalue(f"{kind}_bundle"), request.getfixturevalue(f"{kind}_ckpt")
    meta = json.loads((bundle / "metadata.json").read_text())
    cfg = load_model(ckpt)[1]
    want = deployment_sections(cfg)
    assert {k: meta[k] for k in want} == want
    b = in_memory_bundle(cfg)
    assert (b.tiling.tile, b.tiling.halo, b.tiling.batch) == tuple(want["tiling"].values())
    assert dict(b.postprocessing) == want["postprocessing"]
