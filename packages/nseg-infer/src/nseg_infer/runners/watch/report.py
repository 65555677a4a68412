"""What the folder watch reports from its ledger: OUT/summary.csv while it runs (`Summary`),
`nseg-infer status` (`status_report`) and `nseg-infer status --compact` (`compact_ledger`)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from nseg_infer.runners.summary import write_summary
from nseg_infer.runners.watch.config import log
from nseg_infer.runners.watch.ledger import LEDGER_NAME, Ledger

SUMMARY_EVERY = 5.0      # seconds between summary.csv rewrites while files keep coming


class Summary:
    """OUT/summary.csv lists every file in the ledger, so writing it costs time in proportion to
    the ledger: while files keep coming it is rewritten when idle (`due`), at most every
    SUMMARY_EVERY seconds or ten times the last write's duration, and always at the end. `dirty`:
    files were finished since the last write."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.dirty = False
        self._at = 0.0

    def due(self) -> bool:
        return self.dirty and time.monotonic() >= self._at

    def write(self, ledger: Ledger) -> None:
        t0 = time.monotonic()
        try:
            rows = [r.summary_row() for r in ledger.current() if r.state in ("done", "failed")]
            write_summary(self.out_dir / "summary.csv", rows)
            self.dirty = False
        except (OSError, sqlite3.Error) as e:
            log.warning("could not write %s: %s", self.out_dir / "summary.csv", e)
        took = time.monotonic() - t0
        self._at = time.monotonic() + max(SUMMARY_EVERY, 10 * took)


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
