"""Contour overlays: full resolution for ordinary images, a downsampled overview for large ones."""

from __future__ import annotations

import math

import numpy as np

CONTOUR_RGB = (255, 255, 0)


def overview_factor(height: int, width: int, max_side: int) -> int:
    return max(1, math.ceil(max(height, width) / max_side))


def display_rgb(raw: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """uint8 RGB for display, scaled with the whole-image normalisation range so blocks of a
    large image match each other."""
    a = np.asarray(raw)
    if a.ndim == 2:
        a = a[..., None]
    a = a[..., :3] if a.shape[2] >= 3 else np.repeat(a[..., :1], 3, axis=2)
    scaled = (a.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def reduce_block(rgb: np.ndarray, boundaries: np.ndarray, factor: int) -> np.ndarray:
    """Downsample an RGB block by `factor`, keeping any contour pixel of a cell visible (max-pool),
    because plain subsampling makes one-pixel contours vanish."""
    if factor == 1:
        out = rgb.copy()
        out[boundaries] = CONTOUR_RGB
        return out
    h, w = boundaries.shape
    hh, ww = -(-h // factor), -(-w // factor)
    small = rgb[::factor, ::factor].copy()
    pad = np.zeros((hh * factor, ww * factor), bool)
    pad[:h, :w] = boundaries
    small[pad.reshape(hh, factor, ww, factor).any(axis=(1, 3))] = CONTOUR_RGB
    return small
