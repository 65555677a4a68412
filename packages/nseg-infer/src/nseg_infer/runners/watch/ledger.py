"""The folder watcher's durable record of every input it has seen: the single source of truth for
"done".

One SQLite file in the output folder. A row is one *version* of an input: (path, size, mtime_ns,
sha256), with a state

    pending -> running -> done | failed          (running -> pending again after a crash)

Only one row per path is `current`; a file that changes (new size, mtime or hash) gets a new
current row and is processed again, while the old rows stay as history. A touch that leaves the
content unchanged only updates the current row's mtime: the outputs already match the content.

Durability: WAL journal with synchronous=FULL. With WAL, NORMAL already survives a killed process
(kill -9 only loses what was never handed to the OS); FULL additionally fsyncs the WAL on every
commit, so a `done` survives a power cut too. That costs one fsync per file, milliseconds against
the tenths of seconds or more of inference per file, so the stronger guarantee is nearly free.
The watcher also fsyncs each file's outputs before committing `done`, so `done` never points at
outputs lost from the page cache.

Exactly-once: outputs are renamed into place (each rename atomic) *before* the commit that marks
the row done. A crash between the two leaves the row `running`; on restart it goes back to
`pending` and is processed again, which rewrites identical outputs through the same temp-and-
rename path, so readers only ever see complete files and the ledger counts the file done once.
A row interrupted `MAX_ATTEMPTS` times (an input that crashes the process itself) is failed.

Output faults: a row whose outputs could not be written (full disk, read-only folder) is failed
with the OS's reason and `output_fault = 1`; the input itself may be fine, so `requeue` puts it
back to pending when the watcher finds the folder writable again, and `recover` at start-up
does the same. The ledger lives on the output disk too, so any commit may fail with "database or
disk is full": `transaction` then rolls back, the row keeps its previous state (`running` rows go
back to pending on recovery), and the caller retries later.

Size: one row per input version, about 0.3 kB (path, hash, outputs). `compact` deletes the
history (superseded versions) and, optionally, finished rows older than a given age whose input
file no longer exists: their outputs stay, only the record goes (`nseg-infer status --compact`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

LEDGER_NAME = "nseg-ledger.sqlite"
STATES = ("pending", "running", "done", "failed")
MAX_ATTEMPTS = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id        INTEGER PRIMARY KEY,
    path      TEXT    NOT NULL,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    sha256    TEXT    NOT NULL,
    state     TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    current   INTEGER NOT NULL DEFAULT 1,
    attempts  INTEGER NOT NULL DEFAULT 0,
    error     TEXT,
    n_nuclei  INTEGER,
    height    INTEGER,
    width     INTEGER,
    seconds   REAL,
    backend   TEXT,
    outputs   TEXT,
    created   REAL    NOT NULL,
    started   REAL,
    finished  REAL,
    output_fault INTEGER NOT NULL DEFAULT 0,
    UNIQUE (path, size, mtime_ns, sha256)
);
CREATE INDEX IF NOT EXISTS files_current ON files (path) WHERE current = 1;
CREATE INDEX IF NOT EXISTS files_state ON files (state, current);
CREATE INDEX IF NOT EXISTS files_finished ON files (finished);
"""


@dataclass(frozen=True)
class Row:
    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    state: str
    current: bool
    attempts: int
    error: str | None
    n_nuclei: int | None
    height: int | None
    width: int | None
    seconds: float | None
    backend: str | None
    outputs: tuple[str, ...]
    created: float
    started: float | None
    finished: float | None
    output_fault: bool = False

    @classmethod
    def from_sql(cls, r: sqlite3.Row) -> Row:
        d = dict(r)
        d["current"] = bool(d["current"])
        d["output_fault"] = bool(d.get("output_fault", 0))
        d["outputs"] = tuple(json.loads(d["outputs"])) if d["outputs"] else ()
        return cls(**d)

    def summary_row(self) -> dict:
        """The row `run` writes to summary.csv for this file."""
        h, w = self.height or 0, self.width or 0
        return {"input": self.path, "status": "ok" if self.state == "done" else "error",
                "n_nuclei": self.n_nuclei or 0, "height": h, "width": w,
                "megapixels": round(h * w / 1e6, 3), "seconds": round(self.seconds or 0.0, 3),
                "backend": self.backend or "", "labels": self.outputs[0] if self.outputs else "",
                "error": self.error or ""}


@dataclass(frozen=True)
class Throughput:
    files: int
    failed: int
    megapixels: float
    nuclei: int
    busy_seconds: float
    window_seconds: float

    @property
    def files_per_hour(self) -> float:
        return self.files * 3600.0 / self.window_seconds if self.window_seconds else 0.0

    @property
    def mpx_per_busy_second(self) -> float:
        return self.megapixels / self.busy_seconds if self.busy_seconds else 0.0


class Ledger:
    """One connection; use one `Ledger` per thread (sqlite3 connections are not shared)."""

    def __init__(self, path: str | Path, *, create: bool = True, timeout: float = 60.0) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no ledger here (has `nseg-infer watch` run on this folder?)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: every transaction below is an explicit BEGIN IMMEDIATE ... COMMIT, so
        # the write lock is taken up front and a transition can never half-apply.
        self.db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        if create:
            with self.transaction() as db:
                for statement in _statements(SCHEMA):
                    db.execute(statement)
                # Ledgers from before output faults were told apart gain the column.
                cols = {r[1] for r in db.execute("PRAGMA table_info(files)")}
                if "output_fault" not in cols:
                    db.execute("ALTER TABLE files ADD COLUMN output_fault INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself failed (a full disk): SQLite may or may not have rolled back
            # already, and a transaction left open would make every later BEGIN fail.
            if self.db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            raise

    # -- reading ---------------------------------------------------------------------------------

    def get(self, row_id: int) -> Row:
        r = self.db.execute("SELECT * FROM files WHERE id = ?", (row_id,)).fetchone()
        if r is None:
            raise KeyError(row_id)
        return Row.from_sql(r)

    def current(self, path: str | None = None) -> list[Row]:
        if path is None:
            rows = self.db.execute("SELECT * FROM files WHERE current = 1 ORDER BY id")
        else:
            rows = self.db.execute("SELECT * FROM files WHERE current = 1 AND path = ?", (path,))
        return [Row.from_sql(r) for r in rows]

    def rows(self, path: str | None = None) -> list[Row]:
        if path is None:
            return [Row.from_sql(r) for r in self.db.execute("SELECT * FROM files ORDER BY id")]
        return [Row.from_sql(r) for r in self.db.execute("SELECT * FROM files WHERE path = ? ORDER BY id", (path,))]

    def counts(self) -> dict[str, int]:
        """Current versions by state, plus `superseded` (older versions of changed files)."""
        out = dict.fromkeys(STATES, 0)
        for state, n in self.db.execute("SELECT state, COUNT(*) FROM files WHERE current = 1 GROUP BY state"):
            out[state] = n
        out["superseded"] = self.db.execute("SELECT COUNT(*) FROM files WHERE current = 0").fetchone()[0]
        return out

    def latest_failures(self, limit: int = 10) -> list[Row]:
        rows = self.db.execute("SELECT * FROM files WHERE current = 1 AND state = 'failed' "
                               "ORDER BY finished DESC, id DESC LIMIT ?", (limit,))
        return [Row.from_sql(r) for r in rows]

    def throughput(self, window: float = 3600.0, now: float | None = None) -> Throughput:
        now = time.time() if now is None else now
        since = now - window
        r = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(height * width), 0), COALESCE(SUM(n_nuclei), 0), "
            "COALESCE(SUM(seconds), 0) FROM files WHERE state = 'done' AND finished >= ?", (since,)).fetchone()
        failed = self.db.execute("SELECT COUNT(*) FROM files WHERE state = 'failed' AND finished >= ?",
                                 (since,)).fetchone()[0]
        # Over the part of the window the ledger has existed, so a fresh start is not diluted.
        first = self.db.execute("SELECT MIN(created) FROM files").fetchone()[0]
        span = window if first is None else min(window, max(now - first, 1e-9))
        return Throughput(r[0], failed, r[1] / 1e6, r[2], r[3], span)

    # -- transitions -----------------------------------------------------------------------------

    def observe(self, path: str, size: int, mtime_ns: int, sha256: str) -> Row:
        """Record a complete input seen on disk; returns its current row. A new content version
        becomes a new pending row (the old one stays as history); the same content with a new
        mtime (a touch) keeps its row and state."""
        now = time.time()
        with self.transaction() as db:
            cur = db.execute("SELECT * FROM files WHERE current = 1 AND path = ?", (path,)).fetchone()
            if cur is not None and cur["sha256"] == sha256 and cur["size"] == size:
                if cur["mtime_ns"] != mtime_ns:
                    clash = db.execute("SELECT id FROM files WHERE path = ? AND size = ? AND mtime_ns = ? AND "
                                       "sha256 = ?", (path, size, mtime_ns, sha256)).fetchone()
                    if clash is None:
                        db.execute("UPDATE files SET mtime_ns = ? WHERE id = ?", (mtime_ns, cur["id"]))
                return self._get(db, cur["id"])
            if cur is not None:
                db.execute("UPDATE files SET current = 0 WHERE id = ?", (cur["id"],))
            # A version seen before (content restored with its old mtime) is revived, not duplicated.
            db.execute(
                "INSERT INTO files (path, size, mtime_ns, sha256, state, current, created) "
                "VALUES (?, ?, ?, ?, 'pending', 1, ?) "
                "ON CONFLICT (path, size, mtime_ns, sha256) DO UPDATE SET current = 1, state = 'pending', "
                "error = NULL, attempts = 0, created = excluded.created",
                (path, size, mtime_ns, sha256, now))
            new = db.execute("SELECT id FROM files WHERE path = ? AND size = ? AND mtime_ns = ? AND sha256 = ?",
                             (path, size, mtime_ns, sha256)).fetchone()
            return self._get(db, new["id"])

    def claim(self, ids: Sequence[int]) -> list[int]:
        """pending -> running for those of `ids` still pending and current; returns them."""
        now = time.time()
        got = []
        with self.transaction() as db:
            for i in ids:
                c = db.execute("UPDATE files SET state = 'running', attempts = attempts + 1, started = ? "
                               "WHERE id = ? AND state = 'pending' AND current = 1", (now, i))
                if c.rowcount:
                    got.append(i)
        return got

    def release(self, ids: Iterable[int]) -> None:
        """running -> pending without counting an attempt (a graceful stop before processing)."""
        with self.transaction() as db:
            for i in ids:
                db.execute("UPDATE files SET state = 'pending', attempts = MAX(attempts - 1, 0), started = NULL "
                           "WHERE id = ? AND state = 'running'", (i,))

    def finish(self, row_id: int, *, error: str | None, n_nuclei: int = 0, height: int = 0, width: int = 0,
               seconds: float = 0.0, backend: str = "", outputs: Sequence[str | Path] = (),
               output_fault: bool = False) -> None:
        """running -> done, or failed with `error`; `output_fault`: the outputs could not be
        written (the row is retried once they can be)."""
        state = "done" if error is None else "failed"
        with self.transaction() as db:
            c = db.execute(
                "UPDATE files SET state = ?, error = ?, n_nuclei = ?, height = ?, width = ?, seconds = ?, "
                "backend = ?, outputs = ?, finished = ?, output_fault = ? WHERE id = ? AND state = 'running'",
                (state, error, n_nuclei, height, width, seconds, backend,
                 json.dumps([str(p) for p in outputs]), time.time(), int(error is not None and output_fault),
                 row_id))
            if c.rowcount != 1:
                raise RuntimeError(f"ledger row {row_id} was not running; refusing to mark it {state}")

    def fail(self, row_id: int, error: str) -> None:
        """Any non-final current row -> failed (an input that vanished before it was processed)."""
        with self.transaction() as db:
            db.execute("UPDATE files SET state = 'failed', error = ?, finished = ? "
                       "WHERE id = ? AND state IN ('pending', 'running')", (error, time.time(), row_id))

    def requeue(self, ids: Iterable[int]) -> int:
        """Rows held back by an output fault (running, or failed with `output_fault`) -> pending,
        without counting the attempt: the input did nothing wrong. Returns how many."""
        n = 0
        with self.transaction() as db:
            for i in ids:
                n += db.execute(
                    "UPDATE files SET state = 'pending', error = NULL, output_fault = 0, started = NULL, "
                    "finished = NULL, attempts = MAX(attempts - 1, 0) WHERE id = ? AND current = 1 AND "
                    "(state = 'running' OR (state = 'failed' AND output_fault = 1))", (i,)).rowcount
        return n

    def touch(self) -> None:
        """A real write and commit (the watcher's probe that the ledger's disk takes writes)."""
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS probe (at REAL)")
            db.execute("DELETE FROM probe")
            db.execute("INSERT INTO probe VALUES (?)", (time.time(),))

    def output_faults(self) -> list[int]:
        """Current rows failed because their outputs could not be written."""
        try:
            return [r[0] for r in self.db.execute("SELECT id FROM files WHERE current = 1 AND state = 'failed' "
                                                  "AND output_fault = 1 ORDER BY id")]
        except sqlite3.OperationalError:  # a ledger from before the column, opened read-only (`status`)
            return []

    def mark_outputs_lost(self, reason: str) -> int:
        """Done rows whose outputs are gone (the output folder was deleted) -> failed with
        `reason`, so the ledger never claims results that do not exist; `--retry-failed` redoes
        them. Returns how many."""
        lost = [r.id for r in self.current() if r.state == "done" and any(not Path(o).exists() for o in r.outputs)]
        with self.transaction() as db:
            for i in lost:
                db.execute("UPDATE files SET state = 'failed', error = ?, finished = ? WHERE id = ?",
                           (reason, time.time(), i))
        return len(lost)

    def copy_to(self, path: str | Path) -> None:
        """Write this ledger, as this connection sees it, to a new file `path` (SQLite's backup:
        consistent even while the original file has been deleted from under us)."""
        dst = sqlite3.connect(str(path))
        try:
            self.db.backup(dst)
        finally:
            dst.close()

    def compact(self, *, older_than: float | None = None, now: float | None = None) -> tuple[int, int]:
        """Delete the history of changed files (superseded versions) and, with `older_than`
        seconds, finished current rows older than that whose input file no longer exists, then
        VACUUM. Returns (rows deleted, bytes freed). Outputs on disk are never touched."""
        now = time.time() if now is None else now
        before = self._size()
        with self.transaction() as db:
            n = db.execute("DELETE FROM files WHERE current = 0").rowcount
            if older_than is not None:
                cut = now - older_than
                gone = [r["id"] for r in db.execute(
                    "SELECT id, path FROM files WHERE current = 1 AND state IN ('done', 'failed') AND finished < ?",
                    (cut,)) if not Path(r["path"]).exists()]
                for i in gone:
                    db.execute("DELETE FROM files WHERE id = ?", (i,))
                n += len(gone)
        self.db.execute("VACUUM")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n, max(before - self._size(), 0)

    def _size(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def recover(self) -> tuple[int, int]:
        """After a crash: running rows go back to pending, or to failed once they have been
        interrupted `MAX_ATTEMPTS` times. Returns (requeued, given up)."""
        now = time.time()
        with self.transaction() as db:
            gave_up = db.execute(
                "UPDATE files SET state = 'failed', finished = ?, error = 'processing was interrupted ' || "
                "attempts || ' times (did this input crash the process?)' "
                "WHERE state = 'running' AND attempts >= ?", (now, MAX_ATTEMPTS)).rowcount
            requeued = db.execute("UPDATE files SET state = 'pending', started = NULL "
                                  "WHERE state = 'running'").rowcount
        return requeued, gave_up

    def retry_failed(self) -> int:
        """failed -> pending for current rows (`--retry-failed`)."""
        with self.transaction() as db:
            return db.execute("UPDATE files SET state = 'pending', error = NULL, attempts = 0, finished = NULL "
                              "WHERE state = 'failed' AND current = 1").rowcount

    @staticmethod
    def _get(db: sqlite3.Connection, row_id: int) -> Row:
        return Row.from_sql(db.execute("SELECT * FROM files WHERE id = ?", (row_id,)).fetchone())


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT our open transaction first; run the statements one by one.
    return [s.strip() for s in script.split(";") if s.strip()]
