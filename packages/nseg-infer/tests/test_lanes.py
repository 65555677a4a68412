"""Model calls in flight (`engine.stages.in_flight`, a backend's `lanes`) and images handed on as
they are made (`Predictor.predict_many(on_ready=...)`, `FileRunner._segment_window`): results stay
in order and bitwise the same, while the model keeps running on later tiles and files."""

from __future__ import annotations

import threading

import imagecodecs
import numpy as np
import pytest
import tifffile
from infer_testkit import CountingBackend, synthetic_blobs

from nseg_infer.engine import backends
from nseg_infer.engine.backends import OrtBackend
from nseg_infer.engine.bundle import load_bundle
from nseg_infer.engine.cpu import cpu_lanes
from nseg_infer.engine.predictor import Predictor, RunConfig
from nseg_infer.engine.stages import in_flight
from nseg_infer.runners.files import FileRunner

# A guard against a hang, never a timing: every wait below is met at once when the code works.
WAIT_S = 60


def test_in_flight_runs_lanes_calls_at_once_and_keeps_the_order():
    # Each call waits at a barrier of two: it passes only if two calls run at the same time.
    barrier = threading.Barrier(2, timeout=WAIT_S)

    def call(x: int) -> int:
        barrier.wait()
        return x * x

    assert list(in_flight(call, ((k, k) for k in range(6)), lanes=2)) == [(k, k * k) for k in range(6)]


def test_in_flight_with_one_lane_calls_on_the_callers_thread():
    threads = set()

    def call(x: int) -> int:
        threads.add(threading.get_ident())
        return -x

    assert list(in_flight(call, enumerate([3, 4]), lanes=1)) == [(0, -3), (1, -4)]
    assert threads == {threading.get_ident()}


def test_in_flight_raises_a_calls_error_in_its_place_and_stops_early():
    calls = []

    def call(x: int) -> int:
        calls.append(x)
        if x == 2:
            raise ValueError("tile 2 is bad")
        return x

    got = []
    with pytest.raises(ValueError, match="tile 2 is bad"):
        for _, y in in_flight(call, ((k, k) for k in range(100)), lanes=2):
            got.append(y)
    assert got == [0, 1]
    assert len(calls) <= 4  # two in flight at most past the failed one, not the other 96


def test_closing_in_flight_early_starts_no_more_calls():
    calls = []

    def call(x: int) -> int:
        calls.append(x)
        return x

    it = in_flight(call, ((k, k) for k in range(100)), lanes=2)
    assert next(it) == (0, 0)
    it.close()
    assert len(calls) <= 3


class Recording(CountingBackend):
    """Counts calls and records each call's batch size; passes the wrapped backend's lanes on."""

    def __init__(self, backend) -> None:
        super().__init__(backend)
        self.lanes = backend.lanes
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self.lock:
            self.calls += 1
            self.sizes.append(len(batch))
        return self.backend.run(batch)


def test_two_lanes_split_the_batch_and_give_one_lanes_labels_bitwise(unet_bundle):
    bundle = load_bundle(unet_bundle)
    one = Recording(OrtBackend(bundle, ["CPUExecutionProvider"], threads=2, lanes=1))
    two = Recording(OrtBackend(bundle, ["CPUExecutionProvider"], threads=2, lanes=2))
    assert two.backend.session.get_session_options().intra_op_num_threads == 1
    assert one.backend.session.get_session_options().intra_op_num_threads == 2
    image = synthetic_blobs((400, 500), 40, seed=3)[0]
    a = Predictor(unet_bundle, RunConfig(block=256, margin=64), backend=one).predict(image)
    b = Predictor(unet_bundle, RunConfig(block=256, margin=64), backend=two).predict(image)
    assert a.max_label > 20
    np.testing.assert_array_equal(a.labels, b.labels)
    assert max(one.sizes) == 4 and max(two.sizes) == 2
    assert sum(one.sizes) == sum(two.sizes)


def test_the_cpu_backend_takes_two_lanes_where_it_has_two_cores(unet_bundle):
    backend = backends.create_backend(load_bundle(unet_bundle), "cpu", threads=2)
    assert backend.lanes == 2
    assert backends.create_backend(load_bundle(unet_bundle), "cpu", threads=1).lanes == 1


def test_cpu_lanes_are_two_from_two_cores_and_a_given_count_is_checked():
    assert [cpu_lanes(c) for c in (1, 2, 16)] == [1, 2, 2]
    assert cpu_lanes(16, 4) == 4
    with pytest.raises(ValueError, match="lanes must be >= 1"):
        cpu_lanes(2, -1)


def test_predict_many_hands_each_image_on_once_as_it_is_made(unet_bundle):
    predictor = Predictor(unet_bundle, RunConfig(block=256, margin=64))
    images = [synthetic_blobs(shape, 8, seed=k)[0] for k, shape in enumerate([(60, 80), (200, 220), (60, 80)])]
    seen: dict[int, np.ndarray] = {}

    def ready(k: int, pred) -> None:
        assert k not in seen
        seen[k] = pred.labels

    preds = predictor.predict_many(images, on_ready=ready)
    assert sorted(seen) == [0, 1, 2]
    for k, p in enumerate(preds):
        assert p.max_label > 0
        assert seen[k] is p.labels


def _png(path, shape, seed, n=6):
    path.write_bytes(imagecodecs.png_encode(synthetic_blobs(shape, n, seed=seed)[0]))
    return path


def test_a_files_products_are_written_while_the_model_runs_on_later_files(unet_bundle, tmp_path):
    """One tile per call: the model's third call waits until the first file's products are
    written, which happens only if the file is handed to the writer before its window ends."""
    first_written = threading.Event()

    class WaitsForTheWriter(CountingBackend):
        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            self.calls += 1
            if self.calls == 3 and not first_written.wait(WAIT_S):
                raise AssertionError("the first file was not written while the model ran on the third")
            return self.backend.run(batch)

    backend = WaitsForTheWriter(backends.create_backend(load_bundle(unet_bundle), "cpu"))
    predictor = Predictor(unet_bundle, RunConfig(batch=1), backend=backend)
    paths = [_png(tmp_path / f"s{k}.png", (60, 80), seed=k) for k in range(4)]

    def progress(r) -> None:
        if r.input == paths[0]:
            first_written.set()

    results = FileRunner(predictor).process_many(paths, tmp_path / "out", progress=progress)
    assert [r.ok for r in results] == [True] * 4
    assert [r.input for r in results] == paths
    assert backend.calls == 4


def test_a_window_failing_midway_segments_only_the_files_not_yet_handed_on(unet_bundle, tmp_path):
    """The shared calls fail at the third: the two files already segmented keep their results, the
    other two are segmented alone; every file once, in order, with `process_file`'s labels."""

    class FailsOnce(CountingBackend):
        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("the engine failed once")
            return self.backend.run(batch)

    backend = FailsOnce(backends.create_backend(load_bundle(unet_bundle), "cpu"))
    predictor = Predictor(unet_bundle, RunConfig(batch=1), backend=backend)
    paths = [_png(tmp_path / f"s{k}.png", (60, 80), seed=k) for k in range(4)]
    seen = []
    results = FileRunner(predictor).process_many(paths, tmp_path / "many", progress=seen.append)
    assert [r.input for r in results] == [r.input for r in seen] == paths
    assert [r.ok for r in results] == [True] * 4
    # The 2 shared calls that made files 0 and 1, the failed one, then files 2 and 3 alone.
    assert backend.calls == 5
    for p, r in zip(paths, results, strict=True):
        single = FileRunner(predictor).process_file(p, tmp_path / "one")
        assert r.n_nuclei == single.n_nuclei > 0
        lab = r.outputs[0].name
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "many" / lab), tifffile.imread(tmp_path / "one" / lab))
