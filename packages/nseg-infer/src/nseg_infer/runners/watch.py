"""`nseg-infer watch`: segment every image that lands in a folder, exactly once, around the clock.

Two threads:

- the scanner lists the folder every `poll` seconds, or sooner when watchdog reports an event
  (network shares deliver none, so polling always runs and events only wake it early), waits for
  each file to settle (`nseg_infer.runners.settle`), hashes it and records it in the ledger;
- the main thread takes pending files in arrival order and segments them with the same Predictor
  as `run`, so the outputs are `run`'s. Small images (one tile each) of the same tile shape that
  are waiting together go through `FileRunner.process_files` (each decoded once, one shared model
  call); any other file through `FileRunner.process_file`, tiled as in `run`.

The ledger (`nseg_infer.runners.ledger`) is the only record of what is done; see its docstring for the
crash argument. SIGINT/SIGTERM finish the file in hand, commit and exit 0; a second signal stops
at once (the ledger is crash-safe, so that loses nothing either).

Output faults (the output disk full, the folder read-only, a ledger commit that fails): the file
is recorded failed with the OS's reason where the ledger can still write, and held; processing
*pauses* (nothing new is segmented, the scanner keeps recording arrivals) and a small probe write
to OUT and the ledger is tried after `retry_min` seconds, doubling up to `retry_max`. When a
probe succeeds the held files go back to pending, first in line, and processing resumes. Pausing
rather than going on means no image is segmented only to fail again, and no file is marked
failed just because the disk was full when it arrived.

An output folder deleted while watching is recreated: the ledger is restored from the watcher's
still-open copy, files whose outputs went with the folder are marked failed ("outputs deleted";
`--retry-failed` redoes them), and watching goes on.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import queue
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from nseg_data.atomic import clean_temp_files, exclusive_lock, write_bytes_atomic

from nseg_infer.engine.bundle import sha256_file
from nseg_infer.engine.predictor import Predictor
from nseg_infer.engine.tiling import tile_grid
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import FileRunner
from nseg_infer.runners.inputs import FileResult
from nseg_infer.runners.ledger import LEDGER_NAME, Ledger
from nseg_infer.runners.settle import FolderScanner, Ready, check_decodes
from nseg_infer.sinks.outputs import write_summary
from nseg_infer.sources.prepare import model_shape

log = logging.getLogger("nseg_infer.runners.watch")

LOG_NAME = "watch.log"
LOCK_NAME = ".nseg-watch.lock"
PROBE_NAME = ".nseg-write-probe"
PROBE_BYTES = 64 * 1024  # a probe of a few pages: a disk with less free space than this is still full
MAX_HOLDS = 5            # a file that fails on the output side this often while OUT takes probes is failed
SUMMARY_EVERY = 5.0      # seconds between summary.csv rewrites while files keep coming


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
    retry_min: float = 2.0   # first wait after an output fault, doubling per failed probe ...
    retry_max: float = 60.0  # ... up to this

    def __post_init__(self) -> None:
        if self.poll <= 0 or self.settle < 0 or self.fail_after < 0:
            raise ValueError("poll must be > 0, settle and fail_after >= 0")
        if not 0 < self.retry_min <= self.retry_max:
            raise ValueError(f"need 0 < retry_min <= retry_max, got {self.retry_min}, {self.retry_max}")


@dataclass(frozen=True)
class Job:
    row_id: int
    path: Path
    size: int
    shape: tuple[int, int] | None
    error: str | None


_END = object()


class OutputFault(Exception):
    """Something on the output side (products, ledger) could not be written."""


class _QuietFileHandler(logging.FileHandler):
    """watch.log lives on the output disk; when that is full a log line cannot be written, which
    must neither stop the watcher nor print a traceback per line. Said once on stderr, then quiet
    until a line gets through again (stderr has every line anyway)."""

    failing = False
    _error = False

    def emit(self, record: logging.LogRecord) -> None:
        self._error = False
        super().emit(record)  # calls handleError itself when the write fails
        if not self._error:
            self.failing = False

    def handleError(self, record: logging.LogRecord) -> None:
        self._error = True
        if not self.failing:
            self.failing = True
            err = sys.exc_info()[1]
            with contextlib.suppress(Exception):
                sys.stderr.write(f"nseg-infer watch: cannot write {self.baseFilename} ({err}); "
                                 "log lines go to stderr only until it can\n")
        with contextlib.suppress(Exception):  # drop the half-written line's buffer
            if self.stream is not None:
                self.stream.close()
        self.stream = None  # reopened on the next line


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
        self.jobs: queue.Queue = queue.Queue()
        self.enqueued: set[int] = set()
        self.processed = 0
        self.failed = 0
        self._signals = 0
        self._scanner_error: BaseException | None = None
        # Output faults: jobs held back until OUT is writable again, and when to probe next.
        self.held: list[Job] = []
        self.paused_since: float | None = None
        self._retry_at = 0.0
        self._backoff = config.retry_min
        self.pauses = 0
        self._holds: collections.Counter[int] = collections.Counter()  # output faults per row
        # The ledger's identity on disk, to notice OUT being deleted; the scanner reopens its
        # connection when the generation changes, under the lock.
        self._ledger_id: tuple[int, int] | None = None
        self._ledger_gen = 0
        self._ledger_lock = threading.Lock()
        self._summary_at = 0.0
        self._summary_dirty = False
        self._lock: contextlib.ExitStack | None = None
        self._handler: logging.Handler | None = None
        shape0 = predictor.bundle.inputs[0].shape[:1]
        # A fixed batch axis (an int) means one image per call; names ("batch") are dynamic.
        self.dynamic_batch = predictor.bundle.kind == "unet" and not (shape0 and isinstance(shape0[0], int))

    @property
    def ledger_path(self) -> Path:
        return self.out_dir / LEDGER_NAME

    # -- setup -----------------------------------------------------------------------------------

    def _log_file(self) -> logging.Handler:
        h = _QuietFileHandler(self.out_dir / LOG_NAME, encoding="utf-8")
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        h.setLevel(logging.INFO)
        log.addHandler(h)
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        return h

    def _take_lock(self) -> None:
        lock = contextlib.ExitStack()
        lock.enter_context(exclusive_lock(
            self.out_dir / LOCK_NAME,
            lambda holder: WatchError(f"{self.out_dir}: another `nseg-infer watch` is writing here ({holder})")))
        self._lock = lock

    def _on_signal(self, signum: int, _frame) -> None:
        self._signals += 1
        if self._signals > 1:
            raise KeyboardInterrupt
        log.info("%s: finishing the file in hand, then stopping", signal.Signals(signum).name)
        self.stop.set()
        self.wake.set()

    def _open_ledger(self) -> Ledger:
        ledger = Ledger(self.ledger_path)
        st = os.stat(self.ledger_path)
        self._ledger_id = (st.st_dev, st.st_ino)
        return ledger

    # -- main ------------------------------------------------------------------------------------

    def run(self) -> int:
        try:  # a folder that cannot be made, locked or hold a ledger: say so, no traceback
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            self._handler = self._log_file()
            ledger = self._open_ledger()
        except (OSError, sqlite3.Error) as e:
            if self._lock is not None:
                self._lock.close()
            if self._handler is not None:
                log.removeHandler(self._handler)
                self._handler.close()
            raise WatchError(f"{self.out_dir}: cannot start watching: {e}") from e
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
            scanner = self._make_scanner(ledger)
            if self.config.events:
                observer = self._start_observer()
            t = threading.Thread(target=self._scan_loop, args=(scanner,), name="nseg-watch-scanner", daemon=True)
            t.start()
            ledger = self._work_loop(ledger)
            self.stop.set()
            self.wake.set()
            t.join(timeout=30)
            self._write_summary(ledger)
            log.info("stopped: %d files processed in this session, %d failed%s", self.processed, self.failed,
                     f", {len(self.held)} held back (outputs not writable)" if self.held else "")
            if self._scanner_error is not None:
                raise self._scanner_error
            # --once that ends with files it could not write has not done its job; a service
            # stopped while paused has (a restart retries them).
            return 1 if self.held and self.config.once else 0
        finally:
            if observer is not None:
                with contextlib.suppress(Exception):
                    observer.stop()
                    observer.join(timeout=5)
            ledger.close()
            for s, h in old.items():
                signal.signal(s, h)
            if self._handler is not None:
                log.removeHandler(self._handler)
                self._handler.close()
            if self._lock is not None:
                self._lock.close()

    def _make_scanner(self, ledger: Ledger) -> FolderScanner:
        c = self.config
        scanner = FolderScanner(self.in_dir, pattern=c.pattern, recursive=c.recursive,
                                exclude=[self.out_dir], settle=c.settle, fail_after=c.fail_after,
                                region_px=self.file_config.region_px,
                                max_pixels=self.file_config.max_pixels)
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
        ledger = Ledger(self.ledger_path)
        gen = self._ledger_gen
        first = True
        fault = False
        try:
            while not self.stop.is_set():
                self.wake.clear()
                started = time.monotonic()
                jobs: list[Job] = []
                try:
                    with self._ledger_lock:
                        if gen != self._ledger_gen:  # OUT was recreated: the old connection is a ghost
                            ledger.close()
                            ledger = Ledger(self.ledger_path)
                            gen = self._ledger_gen
                        for r in scanner.step(time.monotonic()):
                            if (j := self._record(ledger, scanner, r)) is not None:
                                jobs.append(j)
                        if first:
                            self._requeue_pending(ledger, scanner, jobs)
                            first = False
                    if fault:
                        fault = False
                        log.info("ledger %s writable again: recording new files", self.ledger_path)
                except sqlite3.Error as e:  # the ledger's disk is full or read-only: files not recorded stay unknown
                    if not fault:
                        fault = True
                        log.error("output folder %s is not writable (ledger: %s): new files are recorded once it "
                                  "is, retrying at every scan", self.out_dir, e)
                except Exception as e:  # a share gone: the next pass retries
                    log.error("scan of %s failed (will retry): %s", self.in_dir, e)
                    log.debug("scan traceback", exc_info=True)
                finally:
                    if jobs:  # recorded pending: hand them on even if a later file's record failed
                        self.jobs.put(jobs)
                if self.config.once and not scanner.settling and not first:
                    self.jobs.put(_END)
                    return
                took = time.monotonic() - started
                deadline = scanner.next_deadline(time.monotonic())
                timeout = self.config.poll if deadline is None else min(self.config.poll, deadline + 0.01)
                self.wake.wait(timeout)
                # Files streaming in wake the scanner with every event, and a pass lists the whole
                # folder: at least twice a pass's time between passes keeps the scanner to a third
                # of one core however full the folder gets, leaving the rest to segmenting.
                rest = started + 3 * took - time.monotonic()
                if rest > 0:
                    self.stop.wait(rest)
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

    def _requeue_pending(self, ledger: Ledger, scanner: FolderScanner, jobs: list[Job]) -> None:
        """Pending rows whose file is still unchanged on disk after a restart go straight back in
        the queue (they were complete when recorded); vanished ones are failed, not forgotten."""
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
            shape, error = check_decodes(p, self.file_config.region_px, self.file_config.max_pixels)
            scanner.mark_known(p, (row.size, row.mtime_ns))
            scanner.settling.pop(p, None)
            self.enqueued.add(row.id)
            jobs.append(Job(row.id, p, row.size, shape, error))

    # -- worker (main thread) --------------------------------------------------------------------

    def _work_loop(self, ledger: Ledger) -> Ledger:
        """Returns the ledger in use at the end (a new one if OUT was recreated meanwhile)."""
        waiting: collections.deque[Job] = collections.deque()
        ended = False
        while not self.stop.is_set():
            try:
                item = self.jobs.get(timeout=0.2 if not waiting or self.held else 0)
                while True:
                    if item is _END:
                        ended = True
                    else:
                        waiting.extend(item)
                    item = self.jobs.get_nowait()
            except queue.Empty:
                pass
            ledger = self._check_out(ledger)
            if self.held and not self._try_resume(ledger, waiting):
                if ended and self.config.once:
                    return ledger  # --once: report what could not be written, do not wait forever
                continue
            if not waiting:
                if self._summary_dirty and time.monotonic() >= self._summary_at:
                    self._write_summary(ledger)
                if ended:
                    return ledger
                continue
            group = self._take_group(waiting)
            self._process_group(ledger, group)
            self._summary_dirty = True
        return ledger

    def _batch_key(self, job: Job) -> tuple[int, int] | None:
        if not self.dynamic_batch or self.batch < 2 or job.shape is None or job.error is not None:
            return None
        # Grouped by the tile shape the model sees, after rescaling and the bundle's resize.
        p = self.predictor
        shape = model_shape(p.bundle, job.shape, self.file_config.inputs)
        if shape is None:
            return None
        grid = tile_grid(*shape, p.tile, p.halo, p.bundle.preprocessing.size_divisor)
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
            return self.runner.process_files([(j.path, self._out_for(j.path)) for j in group])
        return (self.runner.process_file(j.path, self._out_for(j.path)) for j in group)

    def _process_group(self, ledger: Ledger, group: list[Job]) -> None:
        try:
            claimed = set(ledger.claim([j.row_id for j in group]))
        except sqlite3.Error as e:  # nothing claimed: the whole group waits for the ledger
            self._hold(group, f"{self.ledger_path}: {e}")
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
                            r = FileResult(job.path, (), 0, r.seconds, f"{job.path}: outputs not flushed to disk: {e}",
                                           r.height, r.width, r.backend, e.errno)
                except Exception as e:  # bad inputs are reported in the result; this is a bug or a full disk
                    log.debug("traceback for %s", job.path, exc_info=True)
                    r = FileResult(job.path, (), 0, 0.0, f"{job.path}: {type(e).__name__}: {e}",
                                   output_errno=e.errno if isinstance(e, OSError) else None)
                if r.output_errno is not None:
                    fault = r.error
                    if self._holds[job.row_id] >= MAX_HOLDS:
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
                            f"({self.ledger_path}: {e})"
                if fault is not None:
                    self._hold([job], fault)
                    continue
                self.processed += 1
                self.enqueued.discard(job.row_id)
                self._holds.pop(job.row_id, None)
                name = self._display(job.path)
                if r.ok:
                    log.info("done %s %d B, %d nuclei, %.2f s", name, job.size, r.n_nuclei, r.seconds)
                else:
                    self.failed += 1
                    log.info("failed %s %d B, %.2f s: %s", name, job.size, r.seconds, r.error)
        finally:
            results.close()  # an early stop: the group's open files are closed, nothing more written

    # -- output faults ---------------------------------------------------------------------------

    def _hold(self, jobs: list[Job], reason: str) -> None:
        """Keep `jobs` for a retry once OUT is writable, and pause processing until then."""
        self.held.extend(jobs)
        for j in jobs:
            self._holds[j.row_id] += 1
        for j in jobs:
            log.error("not written %s: %s", self._display(j.path), reason)
        if self.paused_since is None:
            self.paused_since = time.monotonic()
            self.pauses += 1
            self._backoff = self.config.retry_min
            log.error("output folder %s is not writable: processing paused; probing again in %.1f s "
                      "(then doubling up to %.0f s)", self.out_dir, self._backoff, self.config.retry_max)
        self._retry_at = time.monotonic() + self._backoff

    def _probe(self, ledger: Ledger) -> None:
        """A write to OUT through the atomic writer and a ledger commit, or the reason they fail."""
        try:
            write_bytes_atomic(self.out_dir / PROBE_NAME, b"\0" * PROBE_BYTES)
            (self.out_dir / PROBE_NAME).unlink()
        except OSError as e:
            raise OutputFault(str(e)) from e
        try:
            ledger.touch()
        except sqlite3.Error as e:
            raise OutputFault(f"{self.ledger_path}: {e}") from e

    def _try_resume(self, ledger: Ledger, waiting: collections.deque[Job]) -> bool:
        """While paused: probe when due; on success the held files go back to pending, first in
        line. Returns True when processing may go on."""
        if time.monotonic() < self._retry_at:
            self.stop.wait(min(0.2, self._retry_at - time.monotonic()))
            return False
        try:
            self._probe(ledger)
            ledger.requeue(j.row_id for j in self.held)
        except (OutputFault, sqlite3.Error) as e:
            self._backoff = min(self._backoff * 2, self.config.retry_max)
            self._retry_at = time.monotonic() + self._backoff
            log.warning("output folder %s still not writable (%s): %d files held, next probe in %.0f s",
                        self.out_dir, e, len(self.held), self._backoff)
            return False
        paused = time.monotonic() - (self.paused_since or time.monotonic())
        log.info("output folder %s writable again after %.0f s: retrying %d held files", self.out_dir, paused,
                 len(self.held))
        waiting.extendleft(reversed(self.held))
        self.held = []
        self.paused_since = None
        return True

    def _check_out(self, ledger: Ledger) -> Ledger:
        """Notice OUT (with its ledger) deleted or replaced under us, and rebuild it: the ledger is
        restored from this open connection, which still sees the deleted file's contents."""
        try:
            st = os.stat(self.ledger_path)
            if (st.st_dev, st.st_ino) == self._ledger_id:
                return ledger
        except OSError:
            pass
        with self._ledger_lock:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.out_dir / f".{LEDGER_NAME}.restore"
                tmp.unlink(missing_ok=True)
                ledger.copy_to(tmp)
                os.replace(tmp, self.ledger_path)
                new = self._open_ledger()
            except (OSError, sqlite3.Error) as e:
                if self.paused_since is None:
                    log.error("output folder %s (with its ledger) is gone and cannot be recreated (%s); "
                              "will retry", self.out_dir, e)
                self._hold([], f"{self.out_dir}: {e}")
                return ledger
            ledger.close()
            self._ledger_gen += 1
        if self._lock is not None:
            self._lock.close()  # the old lock file went with the folder
        try:
            self._take_lock()
        except WatchError as e:  # another watcher took the recreated folder: it owns it now
            log.error("%s; stopping", e)
            self.stop.set()
        if self._handler is not None:
            log.removeHandler(self._handler)
            self._handler.close()
            self._handler = self._log_file()
        lost = new.mark_outputs_lost(f"outputs deleted with the output folder {self.out_dir} (--retry-failed "
                                     "makes them again)")
        log.error("output folder %s was deleted while watching: recreated, ledger restored; %d finished files "
                  "lost their outputs and are marked failed (--retry-failed makes them again)", self.out_dir, lost)
        return new

    def _display(self, path: Path) -> str:
        return path.relative_to(self.in_dir).as_posix() if path.is_relative_to(self.in_dir) else str(path)

    def _write_summary(self, ledger: Ledger) -> None:
        """summary.csv lists every file in the ledger, so writing it costs time in proportion to
        the ledger: while files keep coming it is rewritten when idle, at most every
        SUMMARY_EVERY seconds or ten times the last write's duration, and always at the end."""
        t0 = time.monotonic()
        try:
            rows = [r.summary_row() for r in ledger.current() if r.state in ("done", "failed")]
            write_summary(self.out_dir / "summary.csv", rows)
            self._summary_dirty = False
        except (OSError, sqlite3.Error) as e:
            log.warning("could not write %s: %s", self.out_dir / "summary.csv", e)
        took = time.monotonic() - t0
        self._summary_at = time.monotonic() + max(SUMMARY_EVERY, 10 * took)


# ----------------------------------------------------------------------------------------------
# status


def status_report(out_dir: str | Path, *, failures: int = 10, now: float | None = None) -> str:
    out = Path(out_dir)
    with Ledger(out / LEDGER_NAME, create=False) as ledger:
        counts = ledger.counts()
        unwritten = len(ledger.output_faults())
        fails = ledger.latest_failures(failures)
        tp = ledger.throughput(3600.0, now)
    total = sum(counts[s] for s in ("pending", "running", "done", "failed"))
    lines = [f"{out}: {total} inputs: " + ", ".join(f"{counts[s]} {s}" for s in ("done", "failed", "pending",
                                                                                  "running"))]
    if counts["superseded"]:
        lines.append(f"  ({counts['superseded']} older versions of changed files)")
    if unwritten:
        lines.append(f"  {unwritten} of the failed could not write their outputs (full disk, read-only folder): "
                     "the watcher retries them once it can write")
    lines.append(f"last hour: {tp.files} done, {tp.failed} failed, {tp.files_per_hour:.1f} files/h, "
                 f"{tp.megapixels:.1f} Mpx, {tp.nuclei} nuclei, {tp.busy_seconds:.1f} s processing"
                 + (f" ({tp.mpx_per_busy_second:.2f} Mpx/s)" if tp.busy_seconds else ""))
    if fails:
        lines.append(f"latest failures ({len(fails)} of {counts['failed']}):")
        for r in fails:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.finished)) if r.finished else "?"
            lines.append(f"  {when} {r.error or r.path}")
    return "\n".join(lines)


def compact_ledger(out_dir: str | Path, *, older_than_days: float | None = None) -> str:
    """`nseg-infer status OUT --compact`: shrink the ledger (see `Ledger.compact`); safe while a
    watcher runs (SQLite locks the file for the few statements it takes)."""
    out = Path(out_dir)
    with Ledger(out / LEDGER_NAME, create=False) as ledger:
        n, freed = ledger.compact(older_than=None if older_than_days is None else older_than_days * 86400.0)
    return f"{out / LEDGER_NAME}: {n} records deleted, {freed / 1e6:.2f} MB freed"
