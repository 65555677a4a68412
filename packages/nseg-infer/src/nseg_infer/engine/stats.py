"""Whole-image statistics: the normalisation (low, high) and the modality, from one read of the
image (or of its regular subsample, for a region reader)."""

from __future__ import annotations

import numpy as np
from nseg_data.modality import infer_modality

from nseg_infer.engine.preprocess import Normalization, as_rgb, norm_stats
from nseg_infer.regions import ImageSource, Window

NORM_SAMPLE_PX = 4_000_000


def image_sample(src: ImageSource, *, max_pixels: int = NORM_SAMPLE_PX) -> np.ndarray:
    """HxWx3 pixels the whole-image statistics come from: the image itself, or for a region reader
    the regular subsample that `norm_stats` would take of it, gathered band by band, so a huge TIFF
    gets exactly the statistics of its in-memory twin."""
    if not src.is_region_reader:
        return as_rgb(src.read_all(), source=str(src.path))
    h, w = src.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
    rows = []
    band = max(step, (1024 // step) * step)
    for y0 in range(0, h, band):
        part = src.read(Window(y0, min(y0 + band, h), 0, w))
        rows.append(as_rgb(part[::step, ::step]))
    return np.concatenate(rows, axis=0)


def image_stats(src: ImageSource, norm: Normalization, *, modality: bool = False) -> tuple[float, float, str | None]:
    """(low, high) of `preprocess.norm_stats` over the whole image (see `image_sample`) and, when
    asked, the image's modality (`sample_modality`), both from one read of the sample."""
    sample = image_sample(src)
    lo, hi = norm_stats(sample, norm, max_pixels=NORM_SAMPLE_PX)
    return lo, hi, sample_modality(sample, lo, hi) if modality else None


def sample_modality(sample: np.ndarray, lo: float, hi: float) -> str:
    """`nseg_data.modality.infer_modality` of an `image_sample`: 8-bit pixels as they are (as the
    data set's splits classify them), deeper ones stretched to 8 bits by the image's normalisation."""
    if sample.dtype != np.uint8:
        sample = (np.clip((sample.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    return str(infer_modality(sample))
