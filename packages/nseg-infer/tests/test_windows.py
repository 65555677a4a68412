"""`process_many` segments runs of small files together (`FileRunner._windows`): their tiles share
model calls, yet every file gets exactly `process_file`'s labels, in input order, a corrupt file
is reported by name without ending its window, and a large image still goes alone."""

from __future__ import annotations

import csv

import imagecodecs
import numpy as np
import pytest
import tifffile
from infer_testkit import CountingBackend, synthetic_blobs

from nseg_infer.engine import backends
from nseg_infer.engine.bundle import load_bundle
from nseg_infer.engine.predictor import Predictor, RunConfig
from nseg_infer.runners import files as files_module
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import FileRunner


def _png(path, shape, seed, n=6):
    path.write_bytes(imagecodecs.png_encode(synthetic_blobs(shape, n, seed=seed)[0]))
    return path


@pytest.fixture(scope="module")
def counted(unet_bundle):
    """A Predictor whose model calls are counted; block 256: a 300 x 420 image is several blocks."""
    counter = CountingBackend(backends.create_backend(load_bundle(unet_bundle), "cpu"))
    return Predictor(unet_bundle, RunConfig(block=256, margin=64), backend=counter), counter


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Small images of several shapes (one tile, or four), a corrupt file among them and a large
    image (several instance blocks, labels on disk under `large_px` 100,000) in the middle."""
    d = tmp_path_factory.mktemp("mixed")
    small = [((60, 80), 1), ((90, 70), 2), ((60, 80), 3), ((150, 200), 4), ((90, 70), 5), ((60, 80), 6)]
    paths = [_png(d / f"s{k}.png", shape, seed) for k, (shape, seed) in enumerate(small)]
    cut = d / "cut.png"
    cut.write_bytes(paths[0].read_bytes()[:100])
    large = _png(d / "large.png", (300, 420), 7, n=40)
    return [paths[0], paths[1], cut, paths[2], large, paths[3], paths[4], paths[5]]


def test_windows_give_each_file_process_files_labels_in_input_order(counted, mixed, tmp_path):
    predictor, counter = counted
    files = FileConfig(large_px=100_000)
    one, many = tmp_path / "one", tmp_path / "many"
    singles = [FileRunner(predictor, files).process_file(p, one) for p in mixed]
    calls_alone, counter.calls = counter.calls, 0
    seen = []
    results = FileRunner(predictor, files).process_many(mixed, many, progress=seen.append)
    assert counter.calls < calls_alone
    assert [r.input for r in results] == [r.input for r in seen] == mixed
    assert [r.ok for r in results] == [True, True, False, True, True, True, True, True]
    assert str(mixed[2]) in results[2].error
    for r, s in zip(results, singles, strict=True):
        assert (r.ok, r.n_nuclei, r.height, r.width) == (s.ok, s.n_nuclei, s.height, s.width)
        if r.ok:
            assert r.n_nuclei > 0 and [p.name for p in r.outputs] == [p.name for p in s.outputs]
            for p in r.outputs:
                assert p.is_file()
            lab = r.outputs[0].name
            np.testing.assert_array_equal(tifffile.imread(many / lab), tifffile.imread(one / lab))
    with open(many / "summary.csv", newline="") as f:
        assert [row["input"] for row in csv.DictReader(f)] == [str(p) for p in mixed]


def test_small_files_share_model_calls_across_a_corrupt_file(counted, tmp_path):
    """Four one-tile images of one shape with a corrupt file in the middle: one model call of four
    tiles (the bundle's batch), not one per file, nor two for a window the corrupt file split."""
    predictor, counter = counted
    paths = [_png(tmp_path / f"s{k}.png", (60, 80), seed=k) for k in range(4)]
    cut = tmp_path / "cut.png"
    cut.write_bytes(paths[0].read_bytes()[:100])
    batch = [paths[0], paths[1], cut, paths[2], paths[3]]
    counter.calls = 0
    results = FileRunner(predictor).process_many(batch, tmp_path / "out")
    assert counter.calls == 1
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert str(cut) in results[2].error


def test_a_window_holds_at_most_window_files(counted, tmp_path, monkeypatch):
    predictor, counter = counted
    paths = [_png(tmp_path / f"s{k}.png", (60, 80), seed=k) for k in range(4)]
    monkeypatch.setattr(files_module, "WINDOW_FILES", 2)
    counter.calls = 0
    results = FileRunner(predictor).process_many(paths, tmp_path / "out")
    assert counter.calls == 2 and all(r.ok for r in results)


def test_a_window_that_cannot_run_together_runs_file_by_file(unet_bundle, tmp_path):
    """A backend that takes one tile per call (as an engine built for batch 1): the shared calls
    fail, and each file of the window is segmented alone, as `process_file` segments it."""

    class OneTile(CountingBackend):
        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            if len(batch) > 1:
                raise ValueError(f"this engine takes 1 tile per call, not {len(batch)}")
            return super().run(batch)

    backend = OneTile(backends.create_backend(load_bundle(unet_bundle), "cpu"))
    predictor = Predictor(unet_bundle, backend=backend)
    paths = [_png(tmp_path / f"s{k}.png", (60, 80), seed=k) for k in range(3)]
    singles = [FileRunner(predictor).process_file(p, tmp_path / "one") for p in paths]
    results = FileRunner(predictor).process_many(paths, tmp_path / "many")
    assert [r.ok for r in results] == [True] * 3
    assert [r.n_nuclei for r in results] == [s.n_nuclei for s in singles]
