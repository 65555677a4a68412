"""The file runner: files -> Source -> Predictor -> Sinks, one file at a time or overlapped
across files, with a result per file (its outputs, or the error that names it).

`FileRunner(predictor, file_config)` runs `process_file`, `process_files` (files segmented
together, the folder watch) and `process_many` (the `nseg-infer run` pipeline); `run` expands the
inputs and writes summary.csv. One bad file never stops a batch: its error is in its result.

`process_many` overlaps three stages through bounded queues (`engine.stages`): a reader thread
opens (decodes) the next file while files are segmented, and a writer thread writes the products
of those before meanwhile. Runs of one-block files are segmented together
(`Predictor.predict_many`), a window at a time, so their tiles share model calls, and each file's
products are written while the model runs on the files after it; each file still gets
`process_file`'s labels and products.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from nseg_data.atomic import WriteFailed

from nseg_infer.engine.predictor import Prediction, Predictor, RunConfig
from nseg_infer.engine.stages import Worker, background
from nseg_infer.regions import ImageSource
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.inputs import FileResult, expand_inputs, failed
from nseg_infer.runners.prepare import (
    CanvasFactory,
    ModelInput,
    Segmented,
    check_options,
    measured_input,
    model_input,
    segmented,
    sized_input,
)
from nseg_infer.runners.size import SizeEstimate, estimate_diameters, needs_estimate
from nseg_infer.runners.summary import write_summary
from nseg_infer.sinks.base import LabelledImage
from nseg_infer.sinks.names import stem
from nseg_infer.sinks.outputs import ProductPaths, SinkOptions, write_products
from nseg_infer.sources.options import InputOptions

log = logging.getLogger(__name__)

# A file joins a window of files segmented together in `process_many` when the model sees it as
# one instance block (side <= `RunConfig.block`, 2048 by default: every DSB 2018 size) of at most
# SMALL_PX pixels. Small images share model calls there, and each image's instance step and
# products overlap the model calls of the next ones. A window holds at most WINDOW_FILES files and
# WINDOW_PX of their model pixels (four 2048 x 2048 images): it bounds the images and in-memory
# labels held together, and is large enough that the tiles of each shape in it mostly fill whole
# batches.
SMALL_PX = 1 << 23
WINDOW_FILES = 32
WINDOW_PX = 1 << 24

# A file opened by `FileRunner._open`: (input, output folder, its source or the error, seconds).
_Opened = tuple[Path, Path, ImageSource | Exception, float]


@contextlib.contextmanager
def segment_source(predictor: Predictor, raw: ImageSource, opts: InputOptions = InputOptions(), *,
                   canvas: CanvasFactory = FileConfig().canvas, work_dir: Path | None = None) -> Iterator[Segmented]:
    """Source -> Predictor, for one opened image: `raw` read with `opts` as the model sees it
    (`prepare.sized_input`), predicted, and brought back at its own size (`prepare.segmented`).
    Label canvases come from `canvas` (`FileConfig.canvas`); disk-backed ones of large images live
    until the block ends."""
    inp = sized_input(predictor, raw, opts)
    if inp.made is not None:
        with segmented(canvas, inp, inp.made, work_dir=work_dir) as seg:
            yield seg
        return
    with canvas(inp.source.shape, work_dir=work_dir) as labels:
        pred = predictor.predict(inp.source, labels=labels)
        with segmented(canvas, inp, pred, work_dir=work_dir) as seg:
            yield seg


@dataclass(frozen=True)
class _Job:
    """A segmented file waiting for its products; `resources` (the open file, label canvases and
    their temp files) is closed once they are written."""

    path: Path
    out: Path
    seg: Segmented
    height: int
    width: int
    seconds: float
    resources: contextlib.ExitStack


class FileRunner:
    """Files through one `Predictor`; `file_config` says how inputs are read and which products are
    written. Input options the model cannot honour are refused here, before any file is read."""

    def __init__(self, predictor: Predictor, file_config: FileConfig | None = None) -> None:
        self.predictor = predictor
        self.file_config = file_config or FileConfig()
        check_options(predictor.bundle, self.file_config.inputs)

    def process_file(self, path: str | os.PathLike, out_dir: str | os.PathLike) -> FileResult:
        """Segment one file and write its products. Never raises for a bad input: the error is in
        the result, naming the file. The three stages `process_many` overlaps, one after another."""
        job = self._segment(*self._open(Path(path), Path(out_dir)))
        return job if isinstance(job, FileResult) else self._finish(job)

    def _open(self, p: Path, out: Path) -> _Opened:
        """Stage 1: the output folder made and the file opened (small files are decoded here)."""
        t0 = time.perf_counter()
        try:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise WriteFailed(out, e) from e
            raw: ImageSource | Exception = self.file_config.open(p)
        except Exception as e:
            # Deliberately broad, here and in the other stages: decoders and runtimes raise their
            # own types for corrupt input, and one bad file must never stop a batch.
            raw = e
        return p, out, raw, time.perf_counter() - t0

    def _segment(self, p: Path, out: Path, raw: ImageSource | Exception, seconds: float,
                 made: tuple[ModelInput, Prediction] | None = None) -> _Job | FileResult:
        """Stage 2: the model and the instance step, or with `made` the file's model input and its
        prediction made together with other files' (`_segment_window`), brought back to the
        file's size. The segmentation, its label canvas and the open file stay alive in the job's
        ExitStack until its products are written."""
        if isinstance(raw, Exception):
            return self.failure(p, raw, seconds, 0, 0)
        t0 = time.perf_counter()
        h, w = raw.shape
        canvas = self.file_config.canvas
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(raw)
                seg = stack.enter_context(
                    segment_source(self.predictor, raw, self.file_config.inputs, canvas=canvas, work_dir=out)
                    if made is None else segmented(canvas, *made, work_dir=out))
            except Exception as e:
                return self.failure(p, e, seconds + time.perf_counter() - t0, h, w)
            return _Job(p, out, seg, h, w, seconds + time.perf_counter() - t0, stack.pop_all())

    def _model_input(self, raw: ImageSource | Exception) -> ModelInput | None:
        """The opened file as the model sees it before any measure of its nuclei (a window
        measures its files together: `_measure_window`), or None where it failed to open or that
        fails (`_segment` then meets the error again and reports it with the file's name)."""
        if isinstance(raw, Exception):
            return None
        try:
            return model_input(self.predictor.bundle, raw, self.file_config.inputs)
        except Exception:
            return None

    def _fits_window(self, inp: ModelInput) -> bool:
        """Whether the model input joins a window: at most SMALL_PX pixels and one instance block
        as the model sees it; never above `large_px`, as a window's labels are held in memory."""
        h, w = inp.source.shape
        return h * w <= min(SMALL_PX, self.file_config.large_px) and len(self.predictor.blocks(h, w)) == 1

    def _measure_window(self, run: Sequence[tuple[_Opened, ModelInput | None]], together: dict[int, ModelInput],
                        on_made: Callable[[int], None]) -> None:
        """The nuclei of the files in `together` that the bundle wants measured, measured in shared
        model calls (`runners.size.estimate_diameters`), their inputs replaced by the measured
        ones. A file whose measuring pass is its prediction (it is not enlarged) is told to
        `on_made(k)` as soon as that pass is done, from the Predictor's merger thread, so its
        products are written while the model measures the rest. A file whose measured input no
        longer fits a window (nor, enlarged, in the window's WINDOW_PX model pixels), or whose
        measure fails, leaves `together` and is segmented alone (where an error names it)."""
        opts = self.file_config.inputs
        keys = [k for k, inp in together.items() if needs_estimate(self.predictor.bundle, opts, inp.pixel_size_um)]
        if not keys:
            return
        early: set[int] = set()

        def ready(i: int, est: SizeEstimate) -> None:
            k = keys[i]
            if est.whole is None:
                return
            try:
                inp = measured_input(self.predictor.bundle, run[k][0][2], opts, est)
            except Exception:
                return  # measured again below, where the error leaves the file to be segmented alone
            if inp.made is not None:
                together[k] = inp
                early.add(k)
                on_made(k)

        try:
            estimates = estimate_diameters(self.predictor, [together[k].view for k in keys], on_ready=ready)
        except Exception as e:
            log.warning("measuring the nuclei of %d images together failed (%s); segmenting them one by one",
                        len(keys), e)
            estimates = [None] * len(keys)
        px = sum(i.source.height * i.source.width for k, i in together.items() if k not in keys)
        for k, est in zip(keys, estimates, strict=True):
            if k in early:
                px += together[k].source.height * together[k].source.width
                continue
            try:
                inp = None if est is None else measured_input(self.predictor.bundle, run[k][0][2], opts, est)
            except Exception:
                inp = None
            if inp is not None and self._fits_window(inp) and px + inp.source.height * inp.source.width <= WINDOW_PX:
                together[k] = inp
                px += inp.source.height * inp.source.width
            else:
                del together[k]

    def _window_input(self, raw: ImageSource | Exception) -> ModelInput | None:
        """The model input of an opened file that joins a window of small files: a UNet's (a
        detector takes one tile per call), at most SMALL_PX pixels and, as the model sees it, one
        instance block of at most SMALL_PX pixels; never above `large_px`, as a window's labels
        are held in memory. None for any other file."""
        limit = min(SMALL_PX, self.file_config.large_px)
        if self.predictor.bundle.kind != "unet" or isinstance(raw, Exception) or raw.height * raw.width > limit:
            return None
        inp = self._model_input(raw)
        return inp if inp is not None and self._fits_window(inp) else None

    def _windows(self, opened: Iterable[_Opened]) -> Iterator[list[tuple[_Opened, ModelInput | None]]]:
        """The opened files in input order, cut into runs for `_segment_window`: windows of small
        files (`_window_input`; a file that failed to open takes its place in a window without
        ending it), each closed at WINDOW_FILES files or WINDOW_PX model pixels, and every other
        file alone, ending the window before it."""
        window: list[tuple[_Opened, ModelInput | None]] = []
        px = 0
        for item in opened:
            inp = self._window_input(item[2])
            if inp is None and not isinstance(item[2], Exception):
                if window:
                    yield window
                    window, px = [], 0
                yield [(item, None)]
                continue
            window.append((item, inp))
            px += 0 if inp is None else inp.source.height * inp.source.width
            if len(window) == WINDOW_FILES or px >= WINDOW_PX:
                yield window
                window, px = [], 0
        if window:
            yield window

    def _segment_window(self, run: Sequence[tuple[_Opened, ModelInput | None]],
                        deliver: Callable[[_Job | FileResult], None]) -> None:
        """Stage 2 for a run of opened files: each file's job handed to `deliver` in order, as soon
        as it and the files before it are segmented. The files with a model input are segmented
        together (`Predictor.predict_many`: tiles of one shape share model calls, each image gets
        exactly `predict`'s labels; their jobs are delivered from its merger thread while the model
        runs on the next files), each file's time counted from the one before it; the others (one
        that failed to open, one whose model input failed, a file alone) go through `_segment`. If
        segmenting together fails, the files not yet delivered are segmented alone, so an error
        names its own file."""
        together = {k: inp for k, (_, inp) in enumerate(run) if inp is not None}
        made: dict[int, Prediction] = {}
        done = 0                      # files of the run delivered so far
        last = time.perf_counter()    # when the last prediction was delivered

        def release(alone: bool) -> None:
            """Deliver, in order, the files whose predictions are in; with `alone`, also those
            segmented alone. Only the main thread segments a file alone: from the merger thread
            (`alone` False) the Predictor is busy with the window."""
            nonlocal done, last
            while done < len(run):
                (p, out, raw, seconds), _ = run[done]
                if done in made:
                    now = time.perf_counter()
                    seconds, last = seconds + now - last, now
                    deliver(self._segment(p, out, raw, seconds, (together[done], made.pop(done))))
                elif done not in together and (alone or isinstance(raw, Exception)):
                    deliver(self._segment(p, out, raw, seconds))
                else:
                    break
                done += 1

        def measured(k: int) -> None:  # its measuring pass was its prediction
            made[k] = together[k].made
            release(False)

        self._measure_window(run, together, measured)
        made.update({k: inp.made for k, inp in together.items() if k >= done and inp.made is not None})
        order = [k for k in together if k >= done and k not in made]

        def ready(i: int, pred: Prediction) -> None:
            made[order[i]] = pred
            release(False)

        release(True)
        if order:
            try:
                self.predictor.predict_many([together[k].source for k in order], on_ready=ready)
            except Exception as e:
                # e.g. an engine profile smaller than the batch, or one bad image among them.
                log.warning("segmenting %d images together failed (%s); segmenting the rest one by one",
                            len(order), e)
        release(True)
        for (p, out, raw, seconds), _ in run[done:]:
            deliver(self._segment(p, out, raw, seconds))

    def _finish(self, job: _Job) -> FileResult:
        """Stage 3: the products written, then the file, canvas and temp files released."""
        t0 = time.perf_counter()
        try:
            with job.resources:
                outputs, n = self.write(job.path, job.out, job.seg, job.height, job.width)
            return FileResult(job.path, outputs, n, job.seconds + time.perf_counter() - t0, None, job.height,
                              job.width, self.predictor.backend_name)
        except Exception as e:
            return self.failure(job.path, e, job.seconds + time.perf_counter() - t0, job.height, job.width)

    def process_files(self, jobs: Sequence[tuple[str | os.PathLike, str | os.PathLike]]) -> Iterator[FileResult]:
        """`process_file` of each (input, output folder), in order, each file decoded once and all
        of them segmented together (`_segment_window`), so small images share model calls. Labels
        are held in memory: meant for small images. Results come one by one, as each file's
        products are written; closing the iterator early writes no more and closes the files."""
        opened = [self._open(Path(path), Path(out)) for path, out in jobs]
        pending: deque[_Job | FileResult] = deque()
        self._segment_window([(o, self._model_input(o[2])) for o in opened], pending.append)
        try:
            while pending:
                job = pending.popleft()
                yield job if isinstance(job, FileResult) else self._finish(job)
        finally:
            for job in pending:
                if isinstance(job, _Job):
                    job.resources.close()

    def write(self, p: Path, out: Path, seg: Segmented, h: int, w: int) -> tuple[tuple[Path, ...], int]:
        """The products of input `p`'s segmentation into `out`, through the sinks of
        `file_config.products`: (paths written, nuclei)."""
        paths = ProductPaths.for_input(stem(p), out, self.file_config.products)
        image = LabelledImage(stem(p), seg.labels, seg.max_label, seg.view, seg.norm, seg.channels, seg.scores,
                              seg.pixel_size_um)
        return paths.all(), write_products(paths, image, sink_options(self.predictor.config, self.file_config, (h, w)))

    def failure(self, p: Path, e: Exception, seconds: float, h: int, w: int) -> FileResult:
        return failed(p, e, seconds, h, w, self.predictor.backend_name)

    def process_many(self, paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                     progress: Callable[[FileResult], None] | None = None,
                     summary: bool = True) -> list[FileResult]:
        """Every file, in order; one bad file never stops the batch. Writes OUT/summary.csv.

        `process_file`'s stages, overlapped across files: a reader thread opens (decodes) the next
        file while files are segmented, and a writer thread writes the products of those before
        meanwhile. Runs of one-block files are segmented together, a window of up to WINDOW_FILES
        at a time (`_windows`, `_segment_window`), so their tiles share model calls, each file
        handed to the writer as soon as it is segmented; any other file is segmented alone. The
        reader holds one file ahead and the writer's queue one file, so besides the window being
        segmented at most two files are held (being written, waiting), and an image with labels on disk (above `FileConfig.large_px`) is segmented only once the
        writer is idle, so no two large label images are ever held together. Results and files
        are `process_file`'s, in input order; `progress` is called from the writer thread."""
        out = Path(out_dir)
        results: list[FileResult] = []

        def finish(job: _Job | FileResult) -> None:
            r = job if isinstance(job, FileResult) else self._finish(job)
            results.append(r)
            if progress is not None:
                progress(r)

        writer = Worker(finish, 1, name="nseg-writer")
        try:
            for run in self._windows(background((self._open(Path(p), out) for p in paths), 1)):
                raw = run[0][0][2]
                if isinstance(raw, ImageSource) and raw.height * raw.width > self.file_config.large_px:
                    writer.wait()
                self._segment_window(run, writer.put)
        finally:
            writer.close()
        if summary:
            write_summary(Path(out_dir) / "summary.csv", [r.summary_row() for r in results])
        return results


def sink_options(config: RunConfig, file_config: FileConfig, shape: tuple[int, int]) -> SinkOptions:
    """How the products of an image of `shape` are written under `config` and `file_config` (the file
    runner's and the cluster's, so both cut the same product blocks)."""
    h, w = shape
    return SinkOptions(h * w > file_config.large_px, file_config.block, config.margin, file_config.overview_side)


def run(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, runner: FileRunner | None = None,
        progress: Callable[[FileResult], None] | None = None,
        on_start: Callable[[int], None] | None = None) -> list[FileResult]:
    """`nseg-infer run`: expand inputs (files, folders, glob patterns), segment them all with
    `runner` (default: the default model, default file settings), write summary.csv. Failures, including inputs that
    name nothing, are in the returned list with their error. `on_start` is told how many files
    were found before the first one is segmented."""
    files, missing = expand_inputs(inputs)
    runner = runner or FileRunner(Predictor())
    if on_start is not None:
        on_start(len(files))
    results = missing + runner.process_many(files, out_dir, progress=progress, summary=False)
    try:
        write_summary(Path(out_dir) / "summary.csv", [r.summary_row() for r in results])
    except WriteFailed as e:
        e.results = results  # the images' own results, for the caller to report beside it
        raise
    return results
