"""Explicit conversion of any decoded image to HxWx3 uint8."""

from __future__ import annotations

import numpy as np


def to_rgb_uint8(arr: np.ndarray, *, source: str = "<array>") -> np.ndarray:
    """Grayscale, RGBA, 16-bit and float images to HxWx3 uint8.

    16-bit and float images are rescaled by their own 0.1/99.9 percentiles rather than
    by dtype range, because microscopy 12/16-bit data rarely uses the full range.
    """
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"{source}: expected a 2-D image (HxW or HxWxC), got shape {a.shape}")
    c = a.shape[2]
    if c == 4:
        a = a[..., :3]
    elif c == 2:  # gray + alpha
        a = a[..., :1]
    elif c not in (1, 3):
        raise ValueError(f"{source}: unsupported channel count {c}")
    if a.dtype != np.uint8:
        if a.dtype == np.bool_:
            a = a.astype(np.uint8) * 255
        else:
            f = a.astype(np.float32)
            lo, hi = np.percentile(f, (0.1, 99.9))
            if hi <= lo:
                hi = lo + 1.0
            a = np.clip((f - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)
