"""Input normalisation, shared verbatim by training and the runtime.

Percentiles are taken over the whole image (all channels together, so H&E keeps its colour
balance), never per tile: a tiled image must see exactly the normalisation the untiled one does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """`percentile`: (x - p_low) / (p_high - p_low) over the whole image; `scale_range`: x / the
    dtype's maximum (255 for 8-bit), the seed study's fixed scaling."""

    low_percentile: float = 1.0
    high_percentile: float = 99.8
    kind: str = "percentile"

    def __post_init__(self) -> None:
        if self.kind not in ("percentile", "scale_range"):
            raise ValueError(f"normalization kind must be percentile or scale_range, got {self.kind!r}")
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ValueError(
                f"percentiles must satisfy 0 <= low < high <= 100, got {self.low_percentile}, {self.high_percentile}"
            )


def as_rgb(image: np.ndarray, *, source: str = "<array>") -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 of any dtype to HxWx3 (dtype kept: no uint8 round trip for 16-bit)."""
    a = np.asarray(image)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3:
        raise ValueError(f"{source}: expected HxW or HxWxC image, got shape {a.shape}")
    c = a.shape[2]
    if c == 3:
        return a
    if c == 4:
        return a[..., :3]
    if c in (1, 2):
        return np.repeat(a[..., :1], 3, axis=2)
    raise ValueError(f"{source}: unsupported channel count {c}")


def norm_stats(image: np.ndarray, norm: Normalization, *, max_pixels: int = 4_000_000) -> tuple[float, float]:
    """(low, high) intensity for normalisation; large images are subsampled on a regular grid."""
    a = np.asarray(image)
    if norm.kind == "scale_range":
        return 0.0, float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else 1.0
    n = a.shape[0] * a.shape[1]
    step = max(1, int(np.ceil(np.sqrt(n / max_pixels))))
    sub = a[::step, ::step].astype(np.float32, copy=False)
    lo, hi = np.percentile(sub, (norm.low_percentile, norm.high_percentile))
    lo, hi = float(lo), float(hi)
    if hi - lo < 1e-6:
        hi = lo + 1.0
    return lo, hi


def apply_norm(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """HxWx3 -> float32 HxWx3, (x - lo) / (hi - lo). Not clipped: bright outliers stay informative."""
    out = np.asarray(image, dtype=np.float32)
    out = (out - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return out


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """A normalised HxWx3 float image resized to size x size (bilinear, no anti-aliasing): how the
    seed study's setup (`preprocessing.resize`) sizes every image, in training and at run time."""
    from skimage.transform import resize

    return resize(image, (size, size, image.shape[2]), order=1, preserve_range=True,
                  anti_aliasing=False).astype(np.float32)


def normalize(image: np.ndarray, norm: Normalization) -> np.ndarray:
    rgb = as_rgb(image)
    lo, hi = norm_stats(rgb, norm)
    return apply_norm(rgb, lo, hi)

