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


def describe(device: str = "cpu") -> str:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"{platform.system()} {platform.machine()}", f"{cpu_model()} ({cores} cores, torch {torch.get_num_threads()} threads)"]
    if str(device).startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        parts.append(f"GPU {torch.cuda.get_device_name(idx)}")
    return ", ".join(parts)
