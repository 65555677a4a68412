"""Helpers for the cluster tests that must be importable on dask workers (a worker plugin)."""

from __future__ import annotations

import os

from distributed import WorkerPlugin


def first_start(prefix: str, marker: str, key, finish: str) -> bool:
    """True exactly once on the whole cluster: when a task whose key starts with `prefix` first
    starts executing. `marker`, created atomically with O_EXCL, records it and holds the key."""
    if finish != "executing" or not str(key).startswith(prefix):
        return False
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(key).encode())
    os.close(fd)
    return True


class KillOnce(WorkerPlugin):
    """Kills the worker process (os._exit, no clean-up) the first time a task whose key starts with
    `prefix` starts executing anywhere on the cluster; `marker` (created atomically with O_EXCL)
    records that it happened, so the retry on the restarted or another worker runs normally."""

    name = "nseg-test-kill-once"

    def __init__(self, prefix: str, marker: str) -> None:
        self.prefix = prefix
        self.marker = marker

    def transition(self, key, start, finish, **kwargs) -> None:
        if first_start(self.prefix, self.marker, key, finish):
            os._exit(1)
