"""The folder watch's output folder (`OutputGuard`): its lock, its log, its ledger's identity on
disk, and what happens when it cannot be written.

Output faults (the output disk full, the folder read-only, a ledger commit that fails): the file
is recorded failed with the OS's reason where the ledger can still write, and held; processing
*pauses* (nothing new is segmented, the scanner keeps recording arrivals) and a small probe write
to OUT and the ledger is tried after `retry_min` seconds, doubling up to `retry_max`. When a
probe succeeds the held files go back to pending, first in line, and processing resumes.

An output folder deleted while watching is recreated (`check_out`): the ledger is restored from
the watcher's still-open copy, files whose outputs went with the folder are marked failed
("outputs deleted"; `--retry-failed` redoes them), the lock and watch.log are taken again, and
watching goes on.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from nseg_data.atomic import WriteFailed, exclusive_lock, write_bytes_atomic

from nseg_infer.runners.watch.config import LOCK_NAME, LOG_NAME, Job, WatchConfig, WatchError, display, log
from nseg_infer.runners.watch.ledger import LEDGER_NAME, Ledger

PROBE_NAME = ".nseg-write-probe"
PROBE_BYTES = 64 * 1024  # a probe of a few pages: a disk with less free space than this is still full
MAX_HOLDS = 5            # a file that fails on the output side this often while OUT takes probes is failed


class OutputFault(Exception):
    """Something on the output side (products, ledger) could not be written."""


class QuietFileHandler(logging.FileHandler):
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


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:  # an output not on disk is an output not written
        raise WriteFailed(path, e) from e


def fsync_files(paths: Sequence[Path]) -> None:
    """Flush outputs to disk before the ledger says done, so `done` survives a power cut too:
    each file, then each folder holding one (its entry for the file). A flush that fails is a
    `WriteFailed` naming the file or folder."""
    for p in paths:
        _fsync(p)
    for d in {p.parent for p in paths}:
        _fsync(d)


class OutputGuard:
    """OUT for one Watcher (`in_dir` names inputs in log lines; `stop` is set when another watcher
    takes over a recreated OUT). `held`: files waiting for OUT to be writable again, while
    `paused_since` is set. `ledger_lock` and `generation` tell the scanner thread, which has its
    own ledger connection, when OUT was recreated: it reopens its connection under the lock."""

    def __init__(self, in_dir: Path, out_dir: Path, config: WatchConfig, stop: threading.Event) -> None:
        self.in_dir, self.out_dir, self.config, self.stop = in_dir, out_dir, config, stop
        self.held: list[Job] = []
        self.paused_since: float | None = None
        self.pauses = 0
        self.generation = 0
        self.ledger_lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = config.retry_min
        self._holds: collections.Counter[int] = collections.Counter()  # output faults per row
        self._ledger_id: tuple[int, int] | None = None  # the ledger's identity on disk
        self._lock: contextlib.ExitStack | None = None
        self._handler: logging.Handler | None = None

    @property
    def ledger_path(self) -> Path:
        return self.out_dir / LEDGER_NAME

    # -- setup -----------------------------------------------------------------------------------

    def open(self) -> Ledger:
        """OUT made, locked (one watcher per folder), watch.log attached and the ledger opened; a
        folder that cannot be made, locked or hold a ledger is a WatchError, no traceback."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            self._handler = self._log_file()
            return self._open_ledger()
        except (OSError, sqlite3.Error) as e:
            self.close()
            raise WatchError(f"{self.out_dir}: cannot start watching: {e}") from e

    def close(self) -> None:
        """watch.log detached and the lock released."""
        if self._handler is not None:
            log.removeHandler(self._handler)
            self._handler.close()
        if self._lock is not None:
            self._lock.close()

    def _log_file(self) -> logging.Handler:
        h = QuietFileHandler(self.out_dir / LOG_NAME, encoding="utf-8")
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

    def _open_ledger(self) -> Ledger:
        ledger = Ledger(self.ledger_path)
        st = os.stat(self.ledger_path)
        self._ledger_id = (st.st_dev, st.st_ino)
        return ledger

    # -- output faults ---------------------------------------------------------------------------

    def tries(self, row_id: int) -> int:
        """How often row `row_id` has been held for an output fault."""
        return self._holds[row_id]

    def done(self, row_id: int) -> None:
        """Row `row_id` is finished (done or failed for good): its holds are forgotten."""
        self._holds.pop(row_id, None)

    def hold(self, jobs: list[Job], reason: str) -> None:
        """Keep `jobs` for a retry once OUT is writable, and pause processing until then."""
        self.held.extend(jobs)
        for j in jobs:
            self._holds[j.row_id] += 1
        for j in jobs:
            log.error("not written %s: %s", display(j.path, self.in_dir), reason)
        if self.paused_since is None:
            self.paused_since = time.monotonic()
            self.pauses += 1
            self._backoff = self.config.retry_min
            log.error("output folder %s is not writable: processing paused; probing again in %.1f s "
                      "(then doubling up to %.0f s)", self.out_dir, self._backoff, self.config.retry_max)
        self._retry_at = time.monotonic() + self._backoff

    def probe(self, ledger: Ledger) -> None:
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

    def try_resume(self, ledger: Ledger, waiting: collections.deque[Job]) -> bool:
        """While paused: probe when due; on success the held files go back to pending, first in
        line. Returns True when processing may go on."""
        if time.monotonic() < self._retry_at:
            self.stop.wait(min(0.2, self._retry_at - time.monotonic()))
            return False
        try:
            self.probe(ledger)
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

    # -- OUT deleted while watching --------------------------------------------------------------

    def check_out(self, ledger: Ledger) -> Ledger:
        """Notice OUT (with its ledger) deleted or replaced under us, and rebuild it: the ledger is
        restored from this open connection, which still sees the deleted file's contents."""
        try:
            st = os.stat(self.ledger_path)
            if (st.st_dev, st.st_ino) == self._ledger_id:
                return ledger
        except OSError:
            pass
        with self.ledger_lock:
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
                self.hold([], f"{self.out_dir}: {e}")
                return ledger
            ledger.close()
            self.generation += 1
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
