"""Measuring each image's nucleus size with the model, for a bundle trained at one nucleus size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from infer_testkit import f1_and_counts, synthetic_blobs
from nseg_data.size import MAX_ENLARGING, enlarging_factor, equivalent_diameters, median_diameter
from PIL import Image

from nseg_infer.engine.bundle import BundleError, ScaleSpec, load_bundle
from nseg_infer.engine.config import RunConfig
from nseg_infer.engine.plan import Planner
from nseg_infer.engine.predictor import Predictor
from nseg_infer.regions import ArraySource
from nseg_infer.runners.cluster.tasks import LargeImage, plan_large_image
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import FileRunner, segment_source
from nseg_infer.runners.prepare import model_shape, sized_input
from nseg_infer.runners.size import MIN_NUCLEI, SizeEstimate, centre_window, estimate_diameter, needs_estimate
from nseg_infer.sources.options import InputOptions


def _bundle(src: Path, dst: Path, scale: dict, **pre) -> Path:
    meta = json.loads((src / "metadata.json").read_text())
    meta["scale"] = scale
    meta["preprocessing"].update(pre)
    dst.mkdir()
    (dst / "model.onnx").write_bytes((src / "model.onnx").read_bytes())
    (dst / "metadata.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def estimating(unet_bundle, tmp_path_factory) -> Path:
    """The test UNet (it finds bright discs of any size) as a model trained with nuclei under 14 px enlarged."""
    return _bundle(unet_bundle, tmp_path_factory.mktemp("est") / "b", {"min_nucleus_diameter_px": 14.0})


def test_diameters_and_the_enlarging_rule():
    labels = np.zeros((40, 40), np.uint32)
    labels[0:10, 0:10] = 1       # area 100
    labels[20:24, 20:24] = 3     # area 16; label 2 absent
    np.testing.assert_allclose(equivalent_diameters(labels), np.sqrt(4 * np.array([100, 16]) / np.pi))
    assert median_diameter(labels) == pytest.approx((np.sqrt(400 / np.pi) + np.sqrt(64 / np.pi)) / 2)
    assert median_diameter(labels, min_nuclei=3) is None
    assert median_diameter(np.zeros((4, 4), np.uint32)) is None
    assert enlarging_factor(10.0, 20.0) == 2.0
    assert enlarging_factor(1.0, 20.0) == MAX_ENLARGING
    assert enlarging_factor(25.0, 20.0) == 1.0  # larger nuclei are never shrunk


def test_centre_window():
    w = centre_window(3000, 500, 1024)
    assert (w.y0, w.y1, w.x0, w.x1) == (988, 2012, 0, 500)
    w = centre_window(100, 80, 1024)
    assert (w.y0, w.y1, w.x0, w.x1) == (0, 100, 0, 80)


def test_when_an_image_is_measured(estimating, unet_bundle):
    b = load_bundle(estimating)
    assert b.scale == ScaleSpec(None, None, 14.0)
    assert needs_estimate(b, InputOptions(), None)
    assert needs_estimate(b, InputOptions(pixel_size_um=0.3), (0.3, 0.3))  # the bundle records no pixel size
    assert not needs_estimate(b, InputOptions(diameter=10.0), None)        # the user's diameter wins
    assert not needs_estimate(load_bundle(unet_bundle), InputOptions(), None)
    assert model_shape(b, (100, 100)) is None                             # depends on the file's nuclei
    assert model_shape(b, (100, 100), InputOptions(diameter=7.0)) == (200, 200)
    assert model_shape(b, (100, 100), InputOptions(diameter=28.0)) == (100, 100)


def test_bundle_refuses_an_estimate_it_cannot_make(unet_bundle, tmp_path):
    with pytest.raises(BundleError, match=r"scale\.min_nucleus_diameter_px must be > 0"):
        load_bundle(_bundle(unet_bundle, tmp_path / "a", {"min_nucleus_diameter_px": 0}))
    with pytest.raises(BundleError, match="both set the scale"):
        load_bundle(_bundle(unet_bundle, tmp_path / "c", {"min_nucleus_diameter_px": 14}, resize=256))


@pytest.mark.parametrize(("radius", "zoom", "passes"), [(3, 1, 2), (4, 1, 1), (6, 2, 1)])
def test_estimate_finds_the_nuclei_size_and_segments_there(estimating, radius, zoom, passes):
    """Small nuclei (7 px: enlarging them twice is beyond the band the training covered, so a
    second pass refines the measure), nuclei a little under the model's minimum (9 px: one pass)
    and large ones (26 px: never shrunk). The measured diameter is near the truth (the test
    model's discs come out 10-35 % wider), the image is enlarged by max(1, 14 / d), and the labels
    at the image's size are right."""
    img, gt = synthetic_blobs((160, 200), 40, seed=radius, rmin=radius, rmax=radius + 1)
    img, gt = np.kron(img, np.ones((zoom, zoom), np.uint8)), np.kron(gt, np.ones((zoom, zoom), np.uint32))
    truth = median_diameter(gt)
    p = Predictor(estimating)
    est = estimate_diameter(p, ArraySource(img))
    assert truth <= est.diameter_px <= 1.35 * truth
    assert est.passes == passes
    with segment_source(p, ArraySource(img)) as seg:
        assert seg.rescale.factor == pytest.approx(max(1.0, 14 / est.diameter_px), rel=0.01)
        assert seg.labels.shape == img.shape
        f1, n_gt, n_pred = f1_and_counts(gt, np.asarray(seg.labels))
    assert f1 > 0.9 and abs(n_pred - n_gt) <= 2


def test_too_few_nuclei_leave_the_image_as_it_is(estimating):
    img, _ = synthetic_blobs((120, 120), MIN_NUCLEI - 2, seed=4, rmin=3, rmax=4)
    p = Predictor(estimating)
    assert estimate_diameter(p, ArraySource(img)).diameter_px is None
    assert sized_input(p, ArraySource(img)).rescale.identity


def test_a_given_diameter_is_used_without_measuring(estimating):
    img, _ = synthetic_blobs((120, 120), 20, seed=5, rmin=3, rmax=4)
    p = Predictor(estimating)
    assert sized_input(p, ArraySource(img), InputOptions(diameter=28.0)).rescale.identity  # never shrunk
    assert sized_input(p, ArraySource(img), InputOptions(diameter=3.5)).rescale.factor == pytest.approx(4.0)


def test_a_cluster_measures_a_large_image_before_planning_its_blocks(estimating, unet_bundle, tmp_path):
    """Without a measure the image runs as one file task; measured, it is planned in blocks where
    it is not enlarged (each block sees it as it is), and runs as one file task where it is."""
    img, _ = synthetic_blobs((1200, 1100), 200, seed=6, rmin=4, rmax=6)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, img)
    config = RunConfig(device="cpu", block=512)
    why = plan_large_image(Planner(load_bundle(estimating), config), FileConfig(), path, tmp_path / "out")
    assert why == "the image's nucleus size is measured first (the bundle's scale.min_nucleus_diameter_px)"
    plain = plan_large_image(Planner(load_bundle(unet_bundle), config), FileConfig(), path, tmp_path / "out")
    assert isinstance(plain, LargeImage)
    given = FileConfig(InputOptions(diameter=14.0))  # the user's diameter: nothing to measure, blocks as usual
    assert isinstance(plan_large_image(Planner(load_bundle(estimating), config), given, path, tmp_path / "out"), LargeImage)
    # Measured (on a worker, in a cluster run): planned in blocks unless the image is then enlarged.
    planner = Planner(load_bundle(estimating), config)
    large = plan_large_image(planner, FileConfig(), path, tmp_path / "out", measure=lambda p: SizeEstimate(20.0, 50, 1))
    assert isinstance(large, LargeImage)
    small = plan_large_image(planner, FileConfig(), path, tmp_path / "out", measure=lambda p: SizeEstimate(7.0, 50, 2))
    assert small == "the image is rescaled for the model (nucleus diameter 7 px -> the model's minimum 14 px)"


def test_the_measuring_pass_is_reused_where_the_image_is_not_resampled(estimating, tmp_path, monkeypatch):
    """Nuclei at least the model's minimum: the first pass over the whole image is its prediction,
    made once, and equal to the plain model's; in a window of small files (`process_files`) too."""
    calls = []  # images given to the model
    predict, predict_many = Predictor.predict, Predictor.predict_many
    monkeypatch.setattr(Predictor, "predict", lambda self, *a, **k: calls.append(1) or predict(self, *a, **k))
    monkeypatch.setattr(Predictor, "predict_many",
                        lambda self, images, **k: calls.extend([1] * len(images)) or predict_many(self, images, **k))
    big, _ = synthetic_blobs((150, 170), 20, seed=7, rmin=9, rmax=11)     # ~20 px: not enlarged
    small, _ = synthetic_blobs((150, 170), 40, seed=8, rmin=3, rmax=4)    # ~7 px: enlarged
    p = Predictor(estimating)
    with segment_source(p, ArraySource(big)) as seg:
        reused = np.asarray(seg.labels).copy()
        assert seg.rescale.identity
    assert len(calls) == 1
    np.testing.assert_array_equal(reused, predict(p, ArraySource(big)).labels)
    with segment_source(p, ArraySource(small)) as seg:
        enlarged = np.asarray(seg.labels).copy()
        assert seg.rescale.factor > 1
    jobs = []
    for name, img in (("small", small), ("big", big), ("small2", small)):
        Image.fromarray(img).save(tmp_path / f"{name}.png")
        jobs.append((tmp_path / f"{name}.png", tmp_path / "out"))
    calls.clear()
    results = list(FileRunner(p).process_files(jobs))
    assert [r.error for r in results] == [None] * 3
    # Measured together (3 first passes; the small discs come out about 10 px, within one pass),
    # then only the small ones segmented again, enlarged: the big one's first pass is its prediction.
    assert len(calls) == 3 + 2
    for name, want in (("small", enlarged), ("big", reused), ("small2", enlarged)):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f"{name}.labels.tif"), want)


def test_a_window_hands_on_each_file_as_its_measure_allows(estimating, tmp_path, monkeypatch):
    """In a window of small files, a file whose measuring pass is its prediction goes to the writer
    while the model still measures the others; a file enlarged within the window follows its
    second pass; a file that no longer fits the window once enlarged is segmented alone, on the
    main thread (never on the merger thread that delivers the window's files), in its place."""
    import threading

    import nseg_infer.runners.files as files

    measuring = threading.Event()  # set while the window's files are measured
    estimate = files.estimate_diameters

    def timed_estimate(*a, **k):
        measuring.set()
        try:
            return estimate(*a, **k)
        finally:
            measuring.clear()

    monkeypatch.setattr(files, "estimate_diameters", timed_estimate)
    alone = []  # the thread of each `predict` call: only a file segmented alone (or measured, of its size) makes one
    predict = Predictor.predict
    monkeypatch.setattr(Predictor, "predict",
                        lambda self, *a, **k: alone.append(threading.current_thread()) or predict(self, *a, **k))
    images = {  # name: (image, enlarged, segmented alone)
        "big": (synthetic_blobs((150, 170), 20, seed=7, rmin=9, rmax=11)[0], False, False),
        "medium": (synthetic_blobs((150, 170), 40, seed=8, rmin=3, rmax=4)[0], True, False),   # 150 x 170 -> < 256²
        "leaves": (synthetic_blobs((200, 240), 50, seed=9, rmin=3, rmax=4)[0], True, True),    # > 256: two blocks
        "big2": (synthetic_blobs((150, 170), 20, seed=10, rmin=9, rmax=11)[0], False, False),
    }
    p = Predictor(estimating, RunConfig(device="cpu", block=256))
    jobs = []
    for name, (img, _, _) in images.items():
        Image.fromarray(img).save(tmp_path / f"{name}.png")
        jobs.append((tmp_path / f"{name}.png", tmp_path / "out"))
    runner = FileRunner(p)
    run = [(o, runner._model_input(o[2])) for o in (runner._open(*j) for j in jobs)]
    assert all(inp is not None and runner._fits_window(inp) for _, inp in run)
    delivered = []  # (name, delivered while the window was being measured)
    runner._segment_window(run, lambda job: delivered.append((job.path.stem, measuring.is_set(), job)))
    assert [d[0] for d in delivered] == list(images)
    assert delivered[0][1], "the first file waited for the whole window's measure"
    assert [d[1] for d in delivered[1:]] == [False] * 3
    assert alone and set(alone) == {threading.main_thread()}
    for name, _, job in delivered:
        img, enlarged, _ = images[name]
        with segment_source(p, ArraySource(img)) as seg:
            assert seg.rescale.identity is not enlarged
            np.testing.assert_array_equal(np.asarray(job.seg.labels), np.asarray(seg.labels))
        job.resources.close()
