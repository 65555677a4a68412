"""Contour overlays: full resolution for ordinary images, a downsampled overview for large ones.

Drawn band by band on the downsampled view (pixels subsampled before they are scaled for display,
contours max-pooled so none vanishes), so an overview costs memory and time in proportion to its
own size plus one band of labels, not to the whole image at full resolution.
"""

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
    if a.dtype in (np.uint8, np.uint16):
        # The same float32 arithmetic on every possible value once, then a lookup per pixel.
        return _scale(np.arange(np.iinfo(a.dtype).max + 1, dtype=np.float32), lo, hi)[a]
    return _scale(a.astype(np.float32), lo, hi)


def _scale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def boundaries(framed: np.ndarray) -> np.ndarray:
    """Inner contours of a label window given with a one-pixel frame of context (edge pixels
    repeated at the image's border): labelled pixels with a 4-neighbour of another label, as
    skimage's `find_boundaries(mode="inner")` marks them; the frame is not in the result."""
    c = framed[1:-1, 1:-1]
    other = (c != framed[:-2, 1:-1]) | (c != framed[2:, 1:-1]) | (c != framed[1:-1, :-2]) | (c != framed[1:-1, 2:])
    return other & (c != 0)


def reduce_block(raw: np.ndarray, contours: np.ndarray, factor: int, lo: float, hi: float) -> np.ndarray:
    """The overlay of one window: its raw pixels subsampled by `factor` and scaled for display,
    with every cell holding a contour pixel drawn (max-pool), because plain subsampling makes
    one-pixel contours vanish."""
    small = display_rgb(np.asarray(raw)[::factor, ::factor], lo, hi)
    if factor == 1:
        small[contours] = CONTOUR_RGB
        return small
    h, w = contours.shape
    hh, ww = -(-h // factor), -(-w // factor)
    pad = np.zeros((hh * factor, ww * factor), bool)
    pad[:h, :w] = contours
    small[pad.reshape(hh, factor, ww, factor).any(axis=(1, 3))] = CONTOUR_RGB
    return small
