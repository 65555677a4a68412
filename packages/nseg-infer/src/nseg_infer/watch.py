"""`nseg-infer watch`: segment every image that lands in a folder, exactly once, around the clock.

Two threads:

- the scanner lists the folder every `poll` seconds, or sooner when watchdog reports an event
  (network shares deliver none, so polling always runs and events only wake it early), waits for
  each file to settle (`nseg_infer.settle`), hashes it and records it in the ledger;
- the main thread takes pending files in arrival order and segments them with the same Predictor
  as `run`, so the outputs are `run`'s. Small images (one tile each) of the same tile shape that
  are waiting together go through `Predictor.process_files` (each decoded once, one shared model
  call); any other file through `Predictor.process_file`, tiled as in `run`.

The ledger (`nseg_infer.ledger`) is the only record of what is done; see its docstring for the
crash argument. SIGINT/SIGTERM finish the file in hand, commit and exit 0; a second signal stops
at once (the ledger is crash-safe, so that loses nothing either).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from nseg_data.atomic import clean_temp_files, exclusive_lock

from nseg_infer.bundle import sha256_file
from nseg_infer.inputs import FileResult
from nseg_infer.ledger import LEDGER_NAME, Ledger
from nseg_infer.outputs import write_summary
from nseg_infer.run import Predictor
from nseg_infer.settle import FolderScanner, Ready, check_decodes
from nseg_infer.tiling import tile_grid

log = logging.getLogger("nseg_infer.watch")

LOG_NAME = "watch.log"
LOCK_NAME = ".nseg-watch.lock"


class WatchError(RuntimeError):
    pass


@dataclass(frozen=True)
class WatchConfig:
    in_dir: Path
    out_dir: Path
    pattern: str | None = None
    recursive: bool = False
    poll: float = 2.0
    settle: float = 1.5
    fail_after: float = 30.0
    once: bool = False
    retry_failed: bool = False
    events: bool = True

    def __post_init__(self) -> None:
        if self.poll <= 0 or self.settle < 0 or self.fail_after < 0:
            raise ValueError("poll must be > 0, settle and fail_after >= 0")


@dataclass(frozen=True)
class Job:
    row_id: int
    path: Path
    size: int
    shape: tuple[int, int] | None
    error: str | None


_END = object()


def fsync_files(paths: Sequence[Path]) -> None:
    """Flush outputs to disk before the ledger says done, so `done` survives a power cut too."""
    dirs = set()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dirs.add(p.parent)
    for d in dirs:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Watcher:
    def __init__(self, predictor: Predictor, config: WatchConfig) -> None:
        self.predictor = predictor
        self.config = config
        self.in_dir = Path(config.in_dir).resolve()
        self.out_dir = Path(config.out_dir).resolve()
        if not self.in_dir.is_dir():
            raise WatchError(f"{self.in_dir}: not a folder")
        self.batch = predictor.batch  # small images per group: their one tile each fills one model call
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.jobs: queue.Queue = queue.Queue()
        self.enqueued: set[int] = set()
        self.processed = 0
        self.failed = 0
        self._signals = 0
        self._scanner_error: BaseException | None = None
        shape0 = predictor.bundle.inputs[0].shape[:1]
        # A fixed batch axis (an int) means one image per call; names ("batch") are dynamic.
        self.dynamic_batch = predictor.bundle.kind == "unet" and not (shape0 and isinstance(shape0[0], int))

    # -- setup -----------------------------------------------------------------------------------

    def _log_file(self) -> logging.Handler:
        h = logging.FileHandler(self.out_dir / LOG_NAME, encoding="utf-8")
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        h.setLevel(logging.INFO)
        log.addHandler(h)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        return h

    def _on_signal(self, signum: int, _frame) -> None:
        self._signals += 1
        if self._signals > 1:
            raise KeyboardInterrupt
        log.info("%s: finishing the file in hand, then stopping", signal.Signals(signum).name)
        self.stop.set()
        self.wake.set()

    # -- main ------------------------------------------------------------------------------------

    def run(self) -> int:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lock = contextlib.ExitStack()
        lock.enter_context(exclusive_lock(self.out_dir / LOCK_NAME,
                                          WatchError(f"{self.out_dir}: another `nseg-infer watch` is writing here")))
        handler = self._log_file()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        observer = None
        ledger = Ledger(self.out_dir / LEDGER_NAME)
        try:
            stray = clean_temp_files(self.out_dir)
            requeued, gave_up = ledger.recover()
            retried = ledger.retry_failed() if self.config.retry_failed else 0
            counts = ledger.counts()
            log.info("watching %s -> %s (model %s, %s, batch %d, settle %.1f s, poll %.1f s); ledger: %d done, "
                     "%d failed, %d pending", self.in_dir, self.out_dir, self.predictor.bundle.path,
                     self.predictor.backend_name, self.batch, self.config.settle, self.config.poll,
                     counts["done"], counts["failed"], counts["pending"])
            if requeued or gave_up or stray:
                log.info("recovered from an interrupted run: %d files back to pending, %d given up, %d temp files "
                         "removed", requeued, gave_up, len(stray))
            if retried:
                log.info("retrying %d failed files", retried)
            scanner = self._make_scanner(ledger)
            if self.config.events:
                observer = self._start_observer()
            t = threading.Thread(target=self._scan_loop, args=(scanner,), name="nseg-watch-scanner", daemon=True)
            t.start()
            self._work_loop(ledger)
            self.stop.set()
            self.wake.set()
            t.join(timeout=30)
            self._write_summary(ledger)
            log.info("stopped: %d files processed in this session, %d failed", self.processed, self.failed)
            if self._scanner_error is not None:
                raise self._scanner_error
            return 0
        finally:
            if observer is not None:
                with contextlib.suppress(Exception):
                    observer.stop()
                    observer.join(timeout=5)
            ledger.close()
            for s, h in old.items():
                signal.signal(s, h)
            log.removeHandler(handler)
            handler.close()
            lock.close()

    def _make_scanner(self, ledger: Ledger) -> FolderScanner:
        c = self.config
        scanner = FolderScanner(self.in_dir, pattern=c.pattern, recursive=c.recursive,
                                exclude=[self.out_dir], settle=c.settle, fail_after=c.fail_after,
                                region_px=self.predictor.config.region_px,
                                max_pixels=self.predictor.config.max_pixels)
        for row in ledger.current():
            if row.state in ("done", "failed"):
                scanner.mark_known(Path(row.path), (row.size, row.mtime_ns))
        return scanner

    def _start_observer(self):
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            log.warning("watchdog is not installed: polling every %.1f s", self.config.poll)
            return None
        out = str(self.out_dir)
        wake = self.wake

        def ours(p: str) -> bool:
            return p == out or p.startswith(out + os.sep)

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                # Our own writes land in OUT_DIR; if it sits inside IN_DIR they must not spin the scanner.
                paths = [os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")]
                if any(p and not ours(p) for p in paths):
                    wake.set()

        observer = Observer()
        try:
            observer.schedule(Wake(), str(self.in_dir), recursive=self.config.recursive)
            observer.start()
        except Exception as e:  # inotify limits, unsupported file systems: polling still works
            log.warning("no filesystem events for %s (%s): polling every %.1f s", self.in_dir, e, self.config.poll)
            return None
        return observer

    # -- scanner thread --------------------------------------------------------------------------

    def _scan_loop(self, scanner: FolderScanner) -> None:
        ledger = Ledger(self.out_dir / LEDGER_NAME)
        first = True
        try:
            while not self.stop.is_set():
                self.wake.clear()
                try:
                    ready = scanner.step(time.monotonic())
                    jobs = [j for r in ready if (j := self._record(ledger, scanner, r)) is not None]
                    if first:
                        jobs += self._requeue_pending(ledger, scanner)
                        first = False
                    if jobs:
                        self.jobs.put(jobs)
                except Exception as e:
                    log.error("scan of %s failed (will retry): %s", self.in_dir, e)
                    log.debug("scan traceback", exc_info=True)
                if self.config.once and not scanner.settling and not first:
                    self.jobs.put(_END)
                    return
                deadline = scanner.next_deadline(time.monotonic())
                timeout = self.config.poll if deadline is None else min(self.config.poll, deadline + 0.01)
                self.wake.wait(timeout)
        except BaseException as e:
            self._scanner_error = e
            self.stop.set()
        finally:
            if self.config.once and self.stop.is_set():
                self.jobs.put(_END)
            ledger.close()

    def _record(self, ledger: Ledger, scanner: FolderScanner, r: Ready) -> Job | None:
        try:
            sha = sha256_file(r.path)
            st = r.path.stat()
        except OSError:
            return None  # gone or unreadable for now: the next pass sees it again
        if (st.st_size, st.st_mtime_ns) != (r.size, r.mtime_ns):
            return None  # written to while hashing: it settles again
        row = ledger.observe(str(r.path), r.size, r.mtime_ns, sha)
        scanner.mark_known(r.path, (r.size, r.mtime_ns))
        if row.state != "pending" or row.id in self.enqueued:
            return None
        self.enqueued.add(row.id)
        return Job(row.id, r.path, r.size, r.shape, r.error)

    def _requeue_pending(self, ledger: Ledger, scanner: FolderScanner) -> list[Job]:
        """Pending rows whose file is still unchanged on disk after a restart go straight back in
        the queue (they were complete when recorded); vanished ones are failed, not forgotten."""
        jobs = []
        for row in ledger.current():
            if row.state != "pending" or row.id in self.enqueued:
                continue
            p = Path(row.path)
            try:
                st = p.stat()
            except OSError:
                ledger.fail(row.id, f"{p}: input disappeared before it was processed")
                continue
            if (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
                continue  # changed since: the scanner records the new version after it settles
            shape, error = check_decodes(p, self.predictor.config.region_px, self.predictor.config.max_pixels)
            scanner.mark_known(p, (row.size, row.mtime_ns))
            scanner.settling.pop(p, None)
            self.enqueued.add(row.id)
            jobs.append(Job(row.id, p, row.size, shape, error))
        return jobs

    # -- worker (main thread) --------------------------------------------------------------------

    def _work_loop(self, ledger: Ledger) -> None:
        waiting: collections.deque[Job] = collections.deque()
        ended = False
        while not self.stop.is_set():
            try:
                item = self.jobs.get(timeout=0.2 if not waiting else 0)
                while True:
                    if item is _END:
                        ended = True
                    else:
                        waiting.extend(item)
                    item = self.jobs.get_nowait()
            except queue.Empty:
                pass
            if not waiting:
                if ended:
                    return
                continue
            group = self._take_group(waiting)
            self._process_group(ledger, group)
            if not waiting and self.jobs.empty():
                self._write_summary(ledger)

    def _batch_key(self, job: Job) -> tuple[int, int] | None:
        if not self.dynamic_batch or self.batch < 2 or job.shape is None or job.error is not None:
            return None
        p = self.predictor
        grid = tile_grid(*job.shape, p.tile, p.halo, p.bundle.preprocessing.size_divisor)
        return grid.tile_shape if len(grid) == 1 else None

    def _take_group(self, waiting: collections.deque[Job]) -> list[Job]:
        first = waiting.popleft()
        key = self._batch_key(first)
        group = [first]
        if key is None:
            return group
        rest = collections.deque()
        while waiting and len(group) < self.batch:
            j = waiting.popleft()
            (group if self._batch_key(j) == key else rest).append(j)
        waiting.extendleft(reversed(rest))
        return group

    def _out_for(self, path: Path) -> Path:
        # Mirrors subfolders, so a/x.png and b/x.png (with --recursive) do not overwrite each other.
        rel = path.parent.relative_to(self.in_dir) if path.is_relative_to(self.in_dir) else Path()
        return self.out_dir / rel

    def _results(self, group: list[Job]) -> Iterator[FileResult]:
        if len(group) > 1:
            return self.predictor.process_files([(j.path, self._out_for(j.path)) for j in group])
        return (self.predictor.process_file(j.path, self._out_for(j.path)) for j in group)

    def _process_group(self, ledger: Ledger, group: list[Job]) -> None:
        claimed = set(ledger.claim([j.row_id for j in group]))
        group = [j for j in group if j.row_id in claimed]
        results = self._results(group)
        try:
            for i, job in enumerate(group):
                if i and self.stop.is_set():
                    ledger.release(j.row_id for j in group[i:])
                    return
                try:
                    r = next(results)
                    if r.ok:
                        fsync_files(r.outputs)
                except Exception as e:  # bad inputs are reported in the result; this is a bug or a full disk
                    log.debug("traceback for %s", job.path, exc_info=True)
                    r = FileResult(job.path, (), 0, 0.0, f"{job.path}: {type(e).__name__}: {e}")
                ledger.finish(job.row_id, error=r.error, n_nuclei=r.n_nuclei, height=r.height, width=r.width,
                              seconds=r.seconds, backend=r.backend, outputs=r.outputs)
                self.processed += 1
                name = self._display(job.path)
                if r.ok:
                    log.info("done %s %d B, %d nuclei, %.2f s", name, job.size, r.n_nuclei, r.seconds)
                else:
                    self.failed += 1
                    log.info("failed %s %d B, %.2f s: %s", name, job.size, r.seconds, r.error)
        finally:
            results.close()  # an early stop: the group's open files are closed, nothing more written

    def _display(self, path: Path) -> str:
        return path.relative_to(self.in_dir).as_posix() if path.is_relative_to(self.in_dir) else str(path)

    def _write_summary(self, ledger: Ledger) -> None:
        try:
            rows = [r.summary_row() for r in ledger.current() if r.state in ("done", "failed")]
            write_summary(self.out_dir / "summary.csv", rows)
        except Exception as e:
            log.warning("could not write %s: %s", self.out_dir / "summary.csv", e)


# ----------------------------------------------------------------------------------------------
# status


def status_report(out_dir: str | Path, *, failures: int = 10, now: float | None = None) -> str:
    out = Path(out_dir)
    with Ledger(out / LEDGER_NAME, create=False) as ledger:
        counts = ledger.counts()
        fails = ledger.latest_failures(failures)
        tp = ledger.throughput(3600.0, now)
    total = sum(counts[s] for s in ("pending", "running", "done", "failed"))
    lines = [f"{out}: {total} inputs: " + ", ".join(f"{counts[s]} {s}" for s in ("done", "failed", "pending",
                                                                                  "running"))]
    if counts["superseded"]:
        lines.append(f"  ({counts['superseded']} older versions of changed files)")
    lines.append(f"last hour: {tp.files} done, {tp.failed} failed, {tp.files_per_hour:.1f} files/h, "
                 f"{tp.megapixels:.1f} Mpx, {tp.nuclei} nuclei, {tp.busy_seconds:.1f} s processing"
                 + (f" ({tp.mpx_per_busy_second:.2f} Mpx/s)" if tp.busy_seconds else ""))
    if fails:
        lines.append(f"latest failures ({len(fails)} of {counts['failed']}):")
        for r in fails:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.finished)) if r.finished else "?"
            lines.append(f"  {when} {r.error or r.path}")
    return "\n".join(lines)
