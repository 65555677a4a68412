"""What the folder watch is told (`WatchConfig`) and what its threads hand each other (`Job`).

Shared by the watch's modules: `watch` (the Watcher: start-up and the main thread's processing),
`watch_intake` (the scanner thread), `outguard` (the output folder: its lock, log, ledger and
faults) and `watch_report` (summary.csv, `status`, `--compact`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

# One logger for every module of the watch: the handler that writes OUT/watch.log is attached to it.
log = logging.getLogger("nseg_infer.runners.watch")

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
    retry_min: float = 2.0   # first wait after an output fault, doubling per failed probe ...
    retry_max: float = 60.0  # ... up to this

    def __post_init__(self) -> None:
        if self.poll <= 0 or self.settle < 0 or self.fail_after < 0:
            raise ValueError("poll must be > 0, settle and fail_after >= 0")
        if not 0 < self.retry_min <= self.retry_max:
            raise ValueError(f"need 0 < retry_min <= retry_max, got {self.retry_min}, {self.retry_max}")


@dataclass(frozen=True)
class Job:
    """A pending ledger row, handed from the scanner thread to the main thread."""

    row_id: int
    path: Path
    size: int
    shape: tuple[int, int] | None
    error: str | None


# Put on the job queue by the scanner when `--once` has nothing more to hand on.
END = object()


def display(path: Path, in_dir: Path) -> str:
    """How log lines name an input: relative to the watched folder when inside it."""
    return path.relative_to(in_dir).as_posix() if path.is_relative_to(in_dir) else str(path)
