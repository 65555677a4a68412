"""How many threads a CPU backend runs by default: the cores this process may use (its affinity,
which a container or taskset narrows), not the machine's count."""

from __future__ import annotations

import os


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity outside Linux
        return max(1, os.cpu_count() or 1)
