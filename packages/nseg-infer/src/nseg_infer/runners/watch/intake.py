"""The folder watch's scanner thread (`Intake`): new files in, settled, hashed, recorded pending in
the ledger and handed to the main thread as `Job`s.

The folder is listed every `poll` seconds, or sooner when watchdog reports an event (network
shares deliver none, so polling always runs and events only wake it early); each file waits to
settle (`nseg_infer.runners.watch.settle`) before it is hashed and recorded.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from pathlib import Path

from nseg_infer.engine.bundle import sha256_file
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.watch.config import END, Job, WatchConfig, log
from nseg_infer.runners.watch.guard import OutputGuard
from nseg_infer.runners.watch.ledger import Ledger
from nseg_infer.runners.watch.settle import FolderScanner, Ready, check_decodes


class Intake:
    """What the scanner thread shares with the main thread: `jobs` (lists of `Job`s, then `END`
    with `--once`), `enqueued` (rows handed on and not finished yet: never handed on twice),
    `wake` (set to scan at once) and `error` (what stopped the thread, raised by the Watcher)."""

    def __init__(self, in_dir: Path, out_dir: Path, config: WatchConfig, file_config: FileConfig,
                 guard: OutputGuard, stop: threading.Event, wake: threading.Event) -> None:
        self.in_dir, self.out_dir, self.config, self.file_config = in_dir, out_dir, config, file_config
        self.guard, self.stop, self.wake = guard, stop, wake
        self.jobs: queue.Queue = queue.Queue()
        self.enqueued: set[int] = set()
        self.error: BaseException | None = None

    def scanner(self, ledger: Ledger) -> FolderScanner:
        """The folder's scanner, knowing the files the ledger has finished."""
        c = self.config
        scanner = FolderScanner(self.in_dir, pattern=c.pattern, recursive=c.recursive,
                                exclude=[self.out_dir], settle=c.settle, fail_after=c.fail_after,
                                open_file=self.file_config.open)
        for row in ledger.current():
            if row.state in ("done", "failed"):
                scanner.mark_known(Path(row.path), (row.size, row.mtime_ns))
        return scanner

    def start_observer(self):
        """A watchdog observer that wakes the scanner, or None (no watchdog, no events here)."""
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

    def loop(self, scanner: FolderScanner) -> None:
        """The scanner thread, until `stop` (or, with `--once`, until nothing is left settling)."""
        guard = self.guard
        ledger = Ledger(guard.ledger_path)
        gen = guard.generation
        first = True
        fault = False
        try:
            while not self.stop.is_set():
                self.wake.clear()
                started = time.monotonic()
                jobs: list[Job] = []
                try:
                    with guard.ledger_lock:
                        if gen != guard.generation:  # OUT was recreated: the old connection is a ghost
                            ledger.close()
                            ledger = Ledger(guard.ledger_path)
                            gen = guard.generation
                        for r in scanner.step(time.monotonic()):
                            if (j := self._record(ledger, scanner, r)) is not None:
                                jobs.append(j)
                        if first:
                            self._requeue_pending(ledger, scanner, jobs)
                            first = False
                    if fault:
                        fault = False
                        log.info("ledger %s writable again: recording new files", guard.ledger_path)
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
                    self.jobs.put(END)
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
            self.error = e
            self.stop.set()
        finally:
            if self.config.once and self.stop.is_set():
                self.jobs.put(END)
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
            shape, error = check_decodes(p, self.file_config.open)
            scanner.mark_known(p, (row.size, row.mtime_ns))
            scanner.settling.pop(p, None)
            self.enqueued.add(row.id)
            jobs.append(Job(row.id, p, row.size, shape, error))
