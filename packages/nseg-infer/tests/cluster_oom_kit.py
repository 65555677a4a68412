"""A worker plugin for the cluster fault tests, importable on dask workers: run a worker out of
memory in the middle of a task, for real, once."""

from __future__ import annotations

import os
import time

from cluster_testkit import first_start
from distributed import WorkerPlugin


class OutOfMemoryOnce(WorkerPlugin):
    """The first time a task whose key starts with `prefix` starts executing anywhere on the
    cluster, the worker allocates and touches memory 64 MiB at a time until its nanny kills it for
    exceeding its memory limit (dask's own out-of-memory handling), as a block that needs more
    memory than the worker has would. `marker` (created with O_EXCL) records that it happened, so
    the retry runs normally. Never returns normally on the worker it hits: past `give_up` seconds
    without a kill it exits the process itself (then the test sees no out-of-memory note)."""

    name = "nseg-test-oom-once"

    def __init__(self, prefix: str, marker: str, give_up: float = 120.0) -> None:
        self.prefix = prefix
        self.marker = marker
        self.give_up = give_up

    def transition(self, key, start, finish, **kwargs) -> None:
        if not first_start(self.prefix, self.marker, key, finish):
            return
        hog = []
        end = time.monotonic() + self.give_up
        while time.monotonic() < end:
            hog.append(bytearray(64 << 20))  # bytearray zero-fills: the pages are really touched
            time.sleep(0.05)  # let the nanny's memory monitor (every 100 ms by default) see it
        with open(self.marker + ".not-killed", "w") as f:
            f.write("the nanny did not kill the worker")
        os._exit(1)
