"""A one-line description of the machine a number was measured on (timings mean little without it)."""

from __future__ import annotations

import platform

from nseg_infer.engine.cpu import cpu_flags, cpu_model, cpu_threads


def cpu_bf16_native() -> bool:
    """True where the CPU computes bf16 in hardware (AMX or AVX-512 BF16). There a bf16 training step
    is faster than fp32; on plain AVX2 oneDNN emulates bf16 and a step is many times slower."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


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
