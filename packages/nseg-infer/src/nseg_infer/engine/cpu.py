"""What the CPU in front of the runtime offers: the cores this process may use (its affinity, which
a container or taskset narrows, not the machine's count), its model name and its feature flags
(AVX2, AVX-512, AMX decide which backend and precision are fastest, and what a speed figure means).
Training and the benchmarks read them here too."""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity outside Linux
        return max(1, os.cpu_count() or 1)


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_bf16_native() -> bool:
    """True where the CPU computes bf16 in hardware (AMX or AVX-512 BF16). There a bf16 training step
    is faster than fp32 and OpenVINO runs the UNet faster in bf16 (docs/benchmarks.md); on plain
    AVX2 bf16 is emulated and many times slower."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def cpu_lanes(cores: int, lanes: int | None = None) -> int:
    """How many model calls a CPU backend of `cores` threads takes at once (`lanes`, when given,
    validated): two on 2 or more cores, each on half of them, so one call computes while the
    other's Python side or the post-processing runs and no intra-op thread waits on its partner
    at every operator."""
    n = lanes or (2 if cores >= 2 else 1)
    if n < 1:
        raise ValueError(f"lanes must be >= 1, got {n}")
    return n
