"""Helpers for the cluster tests that must be importable on dask workers (a worker plugin)."""

from __future__ import annotations

import os

from distributed import WorkerPlugin


class KillOnce(WorkerPlugin):
    """Kills the worker process (os._exit, no clean-up) the first time a task whose key starts with
    `prefix` starts executing anywhere on the cluster; `marker` (created atomically with O_EXCL)
    records that it happened, so the retry on the restarted or another worker runs normally."""

    name = "nseg-test-kill-once"

    def __init__(self, prefix: str, marker: str) -> None:
        self.prefix = prefix
        self.marker = marker

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish != "executing" or not str(key).startswith(self.prefix):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(key).encode())
        os.close(fd)
        os._exit(1)
