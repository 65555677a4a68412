"""A one-line description of the machine a number was measured on (timings mean little without it)."""

from __future__ import annotations

import platform

from nseg_infer.engine.cpu import cpu_flags, cpu_model, cpu_threads


def describe(device: str = "cpu") -> str:
    import torch

    cores = cpu_threads()
    simd = "/".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags())
    parts = [f"{platform.system()} {platform.machine()}",
             f"{cpu_model()} ({cores} cores{', ' + simd if simd else ''}, torch {torch.get_num_threads()} threads)"]
    if str(device).startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        parts.append(f"GPU {torch.cuda.get_device_name(idx)}")
    return ", ".join(parts)
