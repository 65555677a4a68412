"""A one-line description of the machine a number was measured on (timings mean little without it)."""

from __future__ import annotations

import os
import platform
from functools import cache


@cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_native() -> bool:
    """True where the CPU computes bf16 in hardware (AMX or AVX-512 BF16). There a bf16 training step
    is faster than fp32; on plain AVX2 oneDNN emulates bf16 and a step is many times slower."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def describe(device: str = "cpu") -> str:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    simd = "/".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags())
    parts = [f"{platform.system()} {platform.machine()}",
             f"{cpu_model()} ({cores} cores{', ' + simd if simd else ''}, torch {torch.get_num_threads()} threads)"]
    if str(device).startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        parts.append(f"GPU {torch.cuda.get_device_name(idx)}")
    return ", ".join(parts)
