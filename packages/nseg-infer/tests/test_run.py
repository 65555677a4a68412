from __future__ import annotations

import csv
import json
import subprocess
import sys

import imagecodecs
import numpy as np
import pytest
import tifffile
from infer_testkit import CountingBackend, same_partition, synthetic_blobs, write_labels_tiff
from typer.testing import CliRunner

from nseg_infer.engine import backends
from nseg_infer.engine.bundle import load_bundle
from nseg_infer.engine.predictor import Predictor, RunConfig
from nseg_infer.runners.cli import app
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import FileRunner
from nseg_infer.runners.inputs import expand_inputs
from nseg_infer.runners.summary import SUMMARY_COLUMNS
from nseg_infer.sinks.measure import COLUMNS


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    img, gt = synthetic_blobs((300, 420), 120, seed=5)
    (d / "a.png").write_bytes(imagecodecs.png_encode(img))
    tifffile.imwrite(d / "b.tif", (img.astype(np.uint16) * 200), compression="zlib")
    (d / "empty.png").write_bytes(b"")
    data = (d / "a.png").read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 3])
    (d / "notes.tif").write_bytes(b"this is not a tiff")
    return d, gt


@pytest.fixture(scope="module")
def predictor(unet_bundle):
    return Predictor(unet_bundle)


def test_batch_outputs_and_failures(predictor, images, tmp_path):
    d, gt = images
    files, missing = expand_inputs([d, d / "a.png", str(d / "*.tif"), d / "nope.png"])
    assert [f.name for f in files] == ["a.png", "b.tif", "cut.png", "empty.png", "notes.tif"]
    assert len(missing) == 1 and "nope.png" in missing[0].error
    seen = []
    results = FileRunner(predictor).process_many(files, tmp_path, progress=seen.append)
    assert len(seen) == 5
    by = {r.input.name: r for r in results}
    for bad in ("cut.png", "empty.png", "notes.tif"):
        assert not by[bad].ok and str(d / bad) in by[bad].error
    for good in ("a.png", "b.tif"):
        r = by[good]
        assert r.ok, r.error
        assert abs(r.n_nuclei - (len(np.unique(gt)) - 1)) <= 3
        for p in r.outputs:
            assert p.is_file() and p.stat().st_size > 0
    # Atomic writes: no temp files left behind, even with failures in the batch.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error", "error"]


def test_products_content(predictor, images, tmp_path):
    d, _ = images
    r = FileRunner(predictor).process_file(d / "a.png", tmp_path)
    labels = tifffile.imread(r.outputs[0])
    assert labels.dtype == np.uint16 and labels.shape == (300, 420)
    with open(r.outputs[1]) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS and len(rows) == r.n_nuclei == labels.max()
    assert sorted(int(x["label"]) for x in rows) == list(range(1, r.n_nuclei + 1))
    row = rows[0]
    lab = int(row["label"])
    assert int(row["area"]) == int((labels == lab).sum())
    assert float(row["integrated_intensity"]) == pytest.approx(float(row["mean_intensity"]) * int(row["area"]), 1e-3)
    gj = json.loads(r.outputs[3].read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == r.n_nuclei
    for feat in gj["features"]:
        assert feat["properties"]["objectType"] == "detection"
        ring = feat["geometry"]["coordinates"][0]
        assert feat["geometry"]["type"] == "Polygon" and len(ring) >= 4 and ring[0] == ring[-1]
        xs, ys = np.array(ring).T
        assert np.sum(xs[:-1] * ys[1:] - xs[1:] * ys[:-1]) > 0  # counter-clockwise exterior
    from PIL import Image

    ov = np.asarray(Image.open(r.outputs[2]))
    assert ov.shape == (300, 420, 3) and (ov == (255, 255, 0)).all(axis=2).any()


def test_products_are_readable_by_others_as_umask_allows(predictor, images, tmp_path):
    """Atomic writes go through mkstemp (mode 0600); a shared workstation needs the usual mode."""
    import os
    import stat

    d, _ = images
    old = os.umask(0o022)
    try:
        r = FileRunner(predictor).process_file(d / "a.png", tmp_path / "o22")
    finally:
        os.umask(old)
    for f in r.outputs:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_large_image_writes_tiled_bigtiff_and_overview(unet_bundle, images, tmp_path):
    d, _ = images
    small = FileRunner(Predictor(unet_bundle)).process_file(d / "a.png", tmp_path / "ref")
    p = Predictor(unet_bundle, RunConfig(block=128, margin=48))
    r = FileRunner(p, FileConfig(large_px=10_000, block=128, overview_side=200)).process_file(d / "a.png", tmp_path / "big")
    assert r.ok, r.error
    with tifffile.TiffFile(r.outputs[0]) as tf:
        assert tf.is_bigtiff and tf.pages[0].is_tiled and tf.pages[0].compression != 1
        big = tf.asarray()
    ref = tifffile.imread(small.outputs[0])
    assert big.dtype == np.uint16 and r.n_nuclei == small.n_nuclei >= 20
    assert same_partition(big, ref, min_nuclei=20)
    from PIL import Image

    assert max(Image.open(r.outputs[2]).size) <= 210
    assert not [q for q in (tmp_path / "big").iterdir() if q.name.startswith(".")]


def test_label_dtype_rule(tmp_path):
    small = np.arange(12, dtype=np.uint32).reshape(3, 4)
    assert tifffile.imread(write_labels_tiff(tmp_path / "s.tif", small, 11, tiled=False)).dtype == np.uint16
    big = small + 70_000
    out = tifffile.imread(write_labels_tiff(tmp_path / "b.tif", big, int(big.max()), tiled=False))
    assert out.dtype == np.uint32 and np.array_equal(out, big)
    out = tifffile.imread(write_labels_tiff(tmp_path / "t.tif", big, int(big.max()), tiled=True))
    assert out.dtype == np.uint32 and np.array_equal(out, big)


def test_cli_lists_failures_and_exits_nonzero(unet_bundle, images, tmp_path):
    d, _ = images
    res = CliRunner().invoke(app, ["run", str(d / "a.png"), str(d / "empty.png"), str(d / "cut.png"),
                                   "--out", str(tmp_path), "--model", str(unet_bundle), "--device", "cpu"])
    assert res.exit_code == 1, res.output
    assert "2 failed" in res.output and str(d / "empty.png") in res.output and str(d / "cut.png") in res.output
    assert "1 of 3 images segmented" in res.output
    assert (tmp_path / "a.labels.tif").is_file() and (tmp_path / "summary.csv").is_file()
    ok = CliRunner().invoke(app, ["run", str(d / "a.png"), "--out", str(tmp_path / "ok"), "--model",
                                  str(unet_bundle), "--tile", "64", "--overlap", "16", "--batch", "2"])
    assert ok.exit_code == 0, ok.output
    bad_model = CliRunner().invoke(app, ["run", str(d / "a.png"), "--out", str(tmp_path), "--model",
                                         str(tmp_path / "none")])
    assert bad_model.exit_code == 2 and "not found" in bad_model.output


def test_device_choice_is_logged_and_unavailable_gpu_is_an_error(unet_bundle, caplog):
    b = load_bundle(unet_bundle)
    with caplog.at_level("INFO", logger="nseg_infer.engine.backends"):
        be = backends.create_backend(b, "auto")
    assert be.name == "onnxruntime:CPU" and "backend: onnxruntime:CPU" in caplog.text
    if "CUDAExecutionProvider" not in backends.ort_providers():
        with pytest.raises(backends.BackendError, match="cuda"):
            backends.create_backend(b, "cuda")
    with pytest.raises(backends.BackendError, match="TensorRT"):
        backends.create_backend(b, "trt")


def test_runtime_never_imports_torch():
    code = ("import sys, pkgutil, importlib, nseg_infer\n"
            "for m in pkgutil.walk_packages(nseg_infer.__path__, 'nseg_infer.'): importlib.import_module(m.name)\n"
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_region_read_tiff_end_to_end_matches_in_memory(unet_bundle, tmp_path, monkeypatch):
    img, _ = synthetic_blobs((700, 900), 300, seed=9)
    p = tmp_path / "scan.ome.tif"
    tifffile.imwrite(p, img, tile=(128, 128), bigtiff=True, compression="zlib", ome=True)
    ref = FileRunner(Predictor(unet_bundle)).process_file(p, tmp_path / "ref")
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: pytest.fail("decoded the whole page"))
    cfg = RunConfig(block=256, margin=48)
    files = FileConfig(region_px=10_000, large_px=10_000, block=256)
    r = FileRunner(Predictor(unet_bundle, cfg), files).process_file(p, tmp_path / "big")
    assert r.ok, r.error
    assert [q.name for q in r.outputs] == ["scan.labels.tif", "scan.csv", "scan.overlay.png", "scan.geojson"]
    monkeypatch.undo()
    a, b = tifffile.imread(ref.outputs[0]), tifffile.imread(r.outputs[0])
    assert r.n_nuclei == ref.n_nuclei >= 250
    assert same_partition(a, b, min_nuclei=250)


def test_probabilities_are_the_field_predict_segments(unet_bundle, maskrcnn_bundle):
    """`nseg-train tune` searches instance parameters on `probabilities`; that is only sound if
    the instance step on it gives exactly `predict`'s labels."""
    from nseg_infer.engine.instances import unet_instances

    img, _ = synthetic_blobs((300, 420), 120, seed=7)
    p = Predictor(unet_bundle, RunConfig(tile=128, batch=3))  # several tiles, uneven last batch
    fields = p.probabilities(img)
    (field,) = fields.fields  # one instance block: the whole image's field
    assert field.shape == (2, 300, 420) and field.dtype == np.float32
    labels = p.predict(img).labels
    assert labels.max() > 0
    np.testing.assert_array_equal(unet_instances(field[0], field[1], p.params), labels)
    np.testing.assert_array_equal(p.instances(fields), labels)
    with pytest.raises(ValueError, match="UNet"):  # the detector stand-in needs a backend, never called here
        Predictor(maskrcnn_bundle, backend=object()).probabilities(img)


def test_tuning_fields_give_predicts_labels_on_an_image_of_many_blocks(unet_bundle, tmp_path):
    """An image larger than one instance block: the fields are per block of the plan, and the
    instance step on them (the margin rule, pasted in block order) is `predict`'s labels exactly,
    with the bundle's parameters and with others (what tune scores is what predict would give)."""
    from nseg_infer.engine.instances import WatershedParams

    img, _ = synthetic_blobs((300, 420), 120, seed=7)
    cfg = RunConfig(tile=128, batch=3, block=128, margin=32)
    p = Predictor(unet_bundle, cfg)
    fields = p.probabilities(img)
    assert len(fields.fields) == len(fields.plan.blocks) == 12
    assert [f.shape[1:] for f in fields.fields] == [b.outer.shape for b in fields.plan.blocks]
    pred = p.predict(img)
    assert pred.max_label > 50
    np.testing.assert_array_equal(p.instances(fields), pred.labels)
    # Other parameters: the same as a bundle that ships them.
    tuned = {"fg_threshold": 0.6, "seed_threshold": 0.4, "min_size": 24}
    assert WatershedParams.from_dict({**p.bundle.postprocessing, **tuned}) != p.params
    other = Predictor(bundle_variant(unet_bundle, tmp_path / "tuned", postprocessing=tuned), cfg)
    expected = other.predict(img).labels
    assert not np.array_equal(expected, pred.labels)
    np.testing.assert_array_equal(p.instances(fields, **tuned), expected)



def test_a_merger_error_surfaces_and_stops_the_tile_reader(unet_bundle):
    """A block step that fails (here on outputs of the wrong size) raises from `predict`, and the
    reader thread feeding the model is stopped with it, not left reading tiles."""
    import threading

    class WrongSize:
        name = "wrong-size"

        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            return {"probs": np.zeros((len(batch), 2, 8, 8), np.float32)}

    img, _ = synthetic_blobs((300, 420), 40, seed=2)
    p = Predictor(unet_bundle, RunConfig(tile=128, batch=1, block=128, margin=32), backend=WrongSize())
    with pytest.raises(ValueError):
        p.predict(img)
    assert not [t for t in threading.enumerate() if t.name in ("nseg-reader", "nseg-merger")]

def test_predict_many_shares_model_calls_and_gives_each_image_predicts_labels(unet_bundle):
    shapes = [(60, 80), (60, 80), (90, 70), (60, 80), (300, 420)]
    images = [synthetic_blobs(s, 6, seed=i)[0] for i, s in enumerate(shapes)]
    counter = CountingBackend(backends.create_backend(load_bundle(unet_bundle), "cpu"))
    # block 256: the last image is several instance blocks, so it is predicted on its own.
    p = Predictor(unet_bundle, RunConfig(block=256, margin=64), backend=counter)
    alone = [p.predict(im) for im in images]
    calls_alone, counter.calls = counter.calls, 0
    many = p.predict_many(images)
    assert counter.calls < calls_alone
    for a, b in zip(alone, many, strict=True):
        assert b.max_label == a.max_label > 0 and b.norm == a.norm
        np.testing.assert_array_equal(b.labels, a.labels)


def bundle_variant(src, dst, **sections):
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    for key, values in sections.items():
        meta[key] = {**meta[key], **values}
    (dst / "metadata.json").write_text(json.dumps(meta))
    return dst


def test_resize_and_components_reproduce_the_seed_setup(unet_bundle, tmp_path):
    """`preprocessing.resize`: the whole image normalised, resized for the model and its labels
    brought back by nearest neighbour; `components`: connected components of the foreground."""
    from nseg_infer.engine.preprocess import normalize, resize_image
    from nseg_infer.engine.stats import image_stats
    from nseg_infer.regions import ArraySource
    from nseg_infer.runners.files import segment_source
    from nseg_infer.runners.prepare import model_input
    from nseg_infer.sources.scale import labels_to_input

    post = {"kind": "components", "fg_threshold": 0.5, "min_size": 4}
    p = Predictor(bundle_variant(unet_bundle, tmp_path / "seed", preprocessing={"resize": 96}, postprocessing=post))
    # The same model handed the normalised, resized image directly (scale_range keeps a float image as is).
    q = Predictor(bundle_variant(unet_bundle, tmp_path / "plain", postprocessing=post,
                                 preprocessing={"normalization": {"kind": "scale_range"}}))
    img, _ = synthetic_blobs((150, 200), 20, seed=3)
    x = resize_image(normalize(img, p.bundle.preprocessing.normalization), 96)
    inp = model_input(p.bundle, ArraySource(img))  # the bundle's resize: a Source decorator
    assert inp.source.shape == (96, 96) and inp.back == ((150, 200),)
    fields = p.probabilities(inp.source)
    (field,) = fields.fields
    assert field.shape == (1, 96, 96)  # components need the foreground only
    np.testing.assert_array_equal(field, q.probabilities(x).fields[0])
    expected = np.zeros((150, 200), np.uint32)
    n, _ = labels_to_input(q.predict(x).labels, expected)
    with segment_source(p, ArraySource(img)) as seg:
        assert seg.max_label == n > 5
        assert seg.norm == image_stats(ArraySource(img), p.bundle.preprocessing.normalization)[:2]  # the input's own
        np.testing.assert_array_equal(seg.labels, expected)
    np.testing.assert_array_equal(inp.to_input(p.instances(fields))[0], expected)
    np.testing.assert_array_equal(inp.to_input(p.predict_many([inp.source])[0].labels)[0], expected)
    with pytest.raises(ValueError, match="resized to 96 x 96"):  # never the raw image by mistake
        p.predict(img)
    bad = bundle_variant(unet_bundle, tmp_path / "bad", postprocessing={"kind": "mystery"})
    with pytest.raises(ValueError, match="mystery"):
        Predictor(bad)
