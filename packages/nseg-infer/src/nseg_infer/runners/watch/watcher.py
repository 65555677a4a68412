"""`nseg-infer watch`: segment every image that lands in a folder, exactly once, around the clock.

Two threads:

- the scanner (`nseg_infer.runners.watch.intake`) lists the folder every `poll` seconds, or sooner
  when watchdog reports an event, waits for each file to settle, hashes it and records it in the
  ledger;
- the main thread (here) takes pending files in arrival order and segments them with the same
  Predictor as `run`, so the outputs are `run`'s. Small images (one tile each) of the same tile
  shape that are waiting together go through `FileRunner.process_files` (each decoded once, one
  shared model call); any other file through `FileRunner.process_file`, tiled as in `run`.

The ledger (`nseg_infer.runners.watch.ledger`) is the only record of what is done; see its docstring for the
crash argument. SIGINT/SIGTERM finish the file in hand, commit and exit 0; a second signal stops
at once (the ledger is crash-safe, so that loses nothing either).

Output faults (a full or read-only output disk, a ledger commit that fails) hold the file and
pause processing until a probe write succeeds; an output folder deleted while watching is
recreated (`nseg_infer.runners.watch.guard`). Pausing rather than going on means no image is
segmented only to fail again, and no file is marked failed just because the disk was full when it
arrived. summary.csv, `status` and `--compact`: `nseg_infer.runners.watch.report`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import queue
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from nseg_data.atomic import clean_temp_files

from nseg_infer.engine.predictor import Predictor
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import FileRunner
from nseg_infer.runners.inputs import FileResult, failed
from nseg_infer.runners.prepare import model_shape
from nseg_infer.runners.watch.config import END, Job, WatchConfig, WatchError, display, log
from nseg_infer.runners.watch.guard import MAX_HOLDS, OutputGuard, fsync_files
from nseg_infer.runners.watch.intake import Intake
from nseg_infer.runners.watch.ledger import Ledger
from nseg_infer.runners.watch.report import Summary


class Watcher:
    """The folder watch: `predictor` segments, `file_config` says how files are read and which
    products are written (as for `nseg-infer run`), `config` what is watched and how."""

    def __init__(self, predictor: Predictor, config: WatchConfig, file_config: FileConfig | None = None) -> None:
        self.predictor = predictor
        self.config = config
        self.runner = FileRunner(predictor, file_config)  # refuses options the model cannot honour
        self.file_config = self.runner.file_config
        self.in_dir = Path(config.in_dir).resolve()
        self.out_dir = Path(config.out_dir).resolve()
        if not self.in_dir.is_dir():
            raise WatchError(f"{self.in_dir}: not a folder")
        self.batch = predictor.batch  # small images per group: their one tile each fills one model call
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.guard = OutputGuard(self.in_dir, self.out_dir, config, self.stop)
        self.intake = Intake(self.in_dir, self.out_dir, config, self.file_config, self.guard, self.stop, self.wake)
        self.summary = Summary(self.out_dir)
        self.processed = 0
        self.failed = 0
        self._signals = 0
        shape0 = predictor.bundle.inputs[0].shape[:1]
        # A fixed batch axis (an int) means one image per call; names ("batch") are dynamic.
        self.dynamic_batch = predictor.bundle.kind == "unet" and not (shape0 and isinstance(shape0[0], int))

    def _on_signal(self, signum: int, _frame) -> None:
        self._signals += 1
        if self._signals > 1:
            raise KeyboardInterrupt
        log.info("%s: finishing the file in hand, then stopping", signal.Signals(signum).name)
        self.stop.set()
        self.wake.set()

    # -- main ------------------------------------------------------------------------------------

    def run(self) -> int:
        ledger = self.guard.open()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        observer = None
        try:
            stray = clean_temp_files(self.out_dir)
            requeued, gave_up = ledger.recover()
            unwritten = ledger.requeue(ledger.output_faults())
            retried = ledger.retry_failed() if self.config.retry_failed else 0
            counts = ledger.counts()
            log.info("watching %s -> %s (model %s, %s, batch %d, settle %.1f s, poll %.1f s); ledger: %d done, "
                     "%d failed, %d pending", self.in_dir, self.out_dir, self.predictor.bundle.path,
                     self.predictor.backend_name, self.batch, self.config.settle, self.config.poll,
                     counts["done"], counts["failed"], counts["pending"])
            if requeued or gave_up or stray:
                log.info("recovered from an interrupted run: %d files back to pending, %d given up, %d temp files "
                         "removed", requeued, gave_up, len(stray))
            if unwritten:
                log.info("retrying %d files whose outputs could not be written before", unwritten)
            if retried:
                log.info("retrying %d failed files", retried)
            scanner = self.intake.scanner(ledger)
            if self.config.events:
                observer = self.intake.start_observer()
            t = threading.Thread(target=self.intake.loop, args=(scanner,), name="nseg-watch-scanner", daemon=True)
            t.start()
            ledger = self._work_loop(ledger)
            self.stop.set()
            self.wake.set()
            t.join(timeout=30)
            self.summary.write(ledger)
            held = self.guard.held
            log.info("stopped: %d files processed in this session, %d failed%s", self.processed, self.failed,
                     f", {len(held)} held back (outputs not writable)" if held else "")
            if self.intake.error is not None:
                raise self.intake.error
            # --once that ends with files it could not write has not done its job; a service
            # stopped while paused has (a restart retries them).
            return 1 if held and self.config.once else 0
        finally:
            if observer is not None:
                with contextlib.suppress(Exception):
                    observer.stop()
                    observer.join(timeout=5)
            ledger.close()
            for s, h in old.items():
                signal.signal(s, h)
            self.guard.close()

    # -- worker (main thread) --------------------------------------------------------------------

    def _work_loop(self, ledger: Ledger) -> Ledger:
        """Returns the ledger in use at the end (a new one if OUT was recreated meanwhile)."""
        waiting: collections.deque[Job] = collections.deque()
        ended = False
        jobs, guard = self.intake.jobs, self.guard
        while not self.stop.is_set():
            try:
                item = jobs.get(timeout=0.2 if not waiting or guard.held else 0)
                while True:
                    if item is END:
                        ended = True
                    else:
                        waiting.extend(item)
                    item = jobs.get_nowait()
            except queue.Empty:
                pass
            ledger = guard.check_out(ledger)
            if guard.held and not guard.try_resume(ledger, waiting):
                if ended and self.config.once:
                    return ledger  # --once: report what could not be written, do not wait forever
                continue
            if not waiting:
                if self.summary.due():
                    self.summary.write(ledger)
                if ended:
                    return ledger
                continue
            group = self.take_group(waiting)
            self._process_group(ledger, group)
            self.summary.dirty = True
        return ledger

    def batch_key(self, job: Job) -> tuple[int, int] | None:
        """The tile shape `job`'s image is seen at, if it is one tile that may share a model call
        with others of the same key; None for a file that runs alone."""
        if not self.dynamic_batch or self.batch < 2 or job.shape is None or job.error is not None:
            return None
        # Grouped by the tile shape the model sees, after rescaling and the bundle's resize.
        p = self.predictor
        shape = model_shape(p.bundle, job.shape, self.file_config.inputs)
        if shape is None:
            return None
        grid = p.grid(*shape)
        return grid.tile_shape if len(grid) == 1 else None

    def take_group(self, waiting: collections.deque[Job]) -> list[Job]:
        """The first waiting job and up to `batch` - 1 later ones of its batch key; the rest keep
        their order."""
        first = waiting.popleft()
        key = self.batch_key(first)
        group = [first]
        if key is None:
            return group
        rest = collections.deque()
        while waiting and len(group) < self.batch:
            j = waiting.popleft()
            (group if self.batch_key(j) == key else rest).append(j)
        waiting.extendleft(reversed(rest))
        return group

    def _out_for(self, path: Path) -> Path:
        # Mirrors subfolders, so a/x.png and b/x.png (with --recursive) do not overwrite each other.
        rel = path.parent.relative_to(self.in_dir) if path.is_relative_to(self.in_dir) else Path()
        return self.out_dir / rel

    def _results(self, group: list[Job]) -> Iterator[FileResult]:
        if len(group) > 1:
            return self.runner.process_files([(j.path, self._out_for(j.path)) for j in group])
        return (self.runner.process_file(j.path, self._out_for(j.path)) for j in group)

    def _process_group(self, ledger: Ledger, group: list[Job]) -> None:
        guard = self.guard
        try:
            claimed = set(ledger.claim([j.row_id for j in group]))
        except sqlite3.Error as e:  # nothing claimed: the whole group waits for the ledger
            guard.hold(group, f"{guard.ledger_path}: {e}")
            return
        group = [j for j in group if j.row_id in claimed]
        results = self._results(group)
        try:
            for i, job in enumerate(group):
                if i and self.stop.is_set():
                    with contextlib.suppress(sqlite3.Error):  # left running if not: recovery requeues them
                        ledger.release(j.row_id for j in group[i:])
                    return
                fault = None
                try:
                    r = next(results)
                    if r.ok:
                        try:
                            fsync_files(r.outputs)
                        except OSError as e:
                            r = failed(job.path, e, r.seconds, r.height, r.width, r.backend)
                except Exception as e:  # bad inputs are reported in the result; this is a bug or a full disk
                    r = failed(job.path, e, 0.0, 0, 0, "")
                if r.output_errno is not None:
                    fault = r.error
                    if guard.tries(job.row_id) >= MAX_HOLDS:
                        # OUT takes probes but this file's outputs still fail (one larger than the
                        # free space, a name the file system refuses): failed for good, not held.
                        fault = None
                        r = dataclasses.replace(r, error=f"{r.error} (still after {MAX_HOLDS} tries)")
                try:
                    ledger.finish(job.row_id, error=r.error, n_nuclei=r.n_nuclei, height=r.height, width=r.width,
                                  seconds=r.seconds, backend=r.backend, outputs=r.outputs,
                                  output_fault=fault is not None)
                except sqlite3.Error as e:  # the ledger is on the output disk too: the row stays running
                    fault = f"{job.path}: {'segmented, but ' if r.ok else ''}the ledger could not record it " \
                            f"({guard.ledger_path}: {e})"
                if fault is not None:
                    guard.hold([job], fault)
                    continue
                self.processed += 1
                self.intake.enqueued.discard(job.row_id)
                guard.done(job.row_id)
                name = display(job.path, self.in_dir)
                if r.ok:
                    log.info("done %s %d B, %d nuclei, %.2f s", name, job.size, r.n_nuclei, r.seconds)
                else:
                    self.failed += 1
                    log.info("failed %s %d B, %.2f s: %s", name, job.size, r.seconds, r.error)
        finally:
            results.close()  # an early stop: the group's open files are closed, nothing more written
