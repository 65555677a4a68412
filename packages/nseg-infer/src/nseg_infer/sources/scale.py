"""Bringing an image to the scale the model was trained at, and its labels back.

The factor f is model pixels per input pixel: `--diameter d` (the typical nucleus diameter in the
user's image, px) gives f = D / d, with D the bundle's `scale.nucleus_diameter_px`, or for a model
trained with small nuclei enlarged to a minimum size M (`scale.min_nucleus_diameter_px`) the same
enlargement, f = M / d for d < M and 1 otherwise (`nseg_data.size.enlarging_factor`); otherwise a
known pixel size p (µm, from the file or `--pixel-size`) and a bundle trained at pixel size P give
f = p / P; otherwise f = 1. Within 1% of 1 nothing is resampled.

The model sees the image resampled to round(H f) x round(W f): area averaging when shrinking,
bilinear interpolation (pixel centres aligned) when enlarging. Each output pixel depends only on
its own input footprint, so a window read of `RescaledSource` equals the same window of the whole
resampled image, and large images are still read region by region. Labels come back at the input's
exact size by nearest neighbour at pixel centres (input pixel y takes model row
floor((y + 0.5) * H' / H)), then are renumbered 1..n in order, dropping nuclei too small to
survive the round trip.

A bundle's whole-image `preprocessing.resize` is the engine's own step (`engine.resize`); its
labels come back the same way, through `labels_to_input`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nseg_data.errors import DataError
from nseg_data.size import enlarging_factor

from nseg_infer.regions import ImageSource, Window

TOLERANCE = 0.01
MIN_FACTOR, MAX_FACTOR = 1 / 16, 16.0
BAND = 1024


@dataclass(frozen=True)
class Rescale:
    factor: float = 1.0
    reason: str = "no rescaling"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"rescale factor must be > 0, got {self.factor}")

    @property
    def identity(self) -> bool:
        return self.factor == 1.0

    def model_shape(self, height: int, width: int) -> tuple[int, int]:
        return max(1, round(height * self.factor)), max(1, round(width * self.factor))


def check_diameter(diameter: float | None, model_diameter_px: float | None, metadata: Path,
                   model_min_diameter_px: float | None = None) -> None:
    """Refuse `--diameter` for a model that records no nucleus diameter (`metadata`: the file that
    would record it), before any image is read: every image would fail the same way."""
    if diameter is not None and model_diameter_px is None and model_min_diameter_px is None:
        raise ValueError(f"--diameter needs a model that records its training scale; {metadata} "
                         "has no 'scale': {'nucleus_diameter_px': ...}")


def rescale_for(path: Path, *, model_diameter_px: float | None, model_pixel_size_um: float | None,
                diameter: float | None, pixel_size_um: tuple[float, float] | None,
                model_min_diameter_px: float | None = None) -> Rescale:
    """The factor for one image (see the module docstring), or a DataError naming the file; the
    model's training scale is `model_min_diameter_px` or `model_diameter_px` (one is needed with
    `diameter`: `check_diameter`) and `model_pixel_size_um`."""
    if diameter is not None and model_min_diameter_px is not None:
        f = enlarging_factor(diameter, model_min_diameter_px)
        reason = (f"nucleus diameter {diameter:g} px -> the model's minimum {model_min_diameter_px:g} px"
                  if f > 1 else f"nucleus diameter {diameter:g} px, at least the model's minimum {model_min_diameter_px:g} px")
    elif diameter is not None:
        f = model_diameter_px / diameter
        reason = f"nucleus diameter {diameter:g} px -> the model's {model_diameter_px:g} px"
    elif pixel_size_um is not None and model_pixel_size_um is not None:
        p = math.sqrt(pixel_size_um[0] * pixel_size_um[1])
        f = p / model_pixel_size_um
        reason = f"pixel size {p:g} µm -> the model's {model_pixel_size_um:g} µm"
    else:
        return Rescale()
    if not MIN_FACTOR <= f <= MAX_FACTOR:
        raise DataError(path, f"rescaling by {f:.3g} ({reason}) is outside {MIN_FACTOR:g}-{MAX_FACTOR:g}; "
                              "check --diameter / --pixel-size")
    if abs(f - 1.0) < TOLERANCE:
        return Rescale(1.0, reason + " (within 1%: not resampled)")
    return Rescale(f, reason)


def _taps(n_in: int, n_out: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (stop - start) x K: output pixel j of a 1-D resampling from n_in
    to n_out pixels is sum_k weights[j, k] * input[indices[j, k]]."""
    s = n_in / n_out  # input pixels per output pixel
    j = np.arange(start, stop, dtype=np.float64)[:, None]
    if s <= 1:  # enlarge: bilinear between the two nearest input centres, clamped at the edges
        c = np.clip((j + 0.5) * s - 0.5, 0, n_in - 1)
        i0 = np.floor(c)
        w1 = c - i0
        idx = np.concatenate([i0, np.minimum(i0 + 1, n_in - 1)], axis=1)
        return idx.astype(np.int64), np.concatenate([1 - w1, w1], axis=1)
    # shrink: average over the footprint [j s, (j + 1) s), partial pixels weighted by overlap
    k = int(math.ceil(s)) + 1
    lo = j * s
    first = np.floor(lo)
    idx = first + np.arange(k)[None, :]
    left = np.maximum(idx, lo)
    right = np.minimum(idx + 1, lo + s)
    w = np.clip(right - left, 0, None) / s
    return np.clip(idx, 0, n_in - 1).astype(np.int64), w


def _apply(a: np.ndarray, axis: int, idx: np.ndarray, w: np.ndarray, offset: int) -> np.ndarray:
    taken = np.take(a, idx - offset, axis=axis)  # axis becomes (n_out, K)
    shape = [1] * taken.ndim
    shape[axis], shape[axis + 1] = w.shape
    return (taken * w.reshape(shape).astype(np.float32)).sum(axis=axis + 1, dtype=np.float32)


class RescaledSource(ImageSource):
    """`src` resampled to `shape` (float32), read window by window."""

    def __init__(self, src: ImageSource, shape: tuple[int, int]) -> None:
        self.src = src
        self.path, self.info = src.path, src.info
        self.height, self.width = shape
        self.channels = src.channels
        self.dtype = np.dtype(np.float32)
        self.is_region_reader = src.is_region_reader

    def read(self, window: Window) -> np.ndarray:
        h, w = self.src.shape
        iy, wy = _taps(h, self.height, window.y0, window.y1)
        ix, wx = _taps(w, self.width, window.x0, window.x1)
        r0, r1, c0, c1 = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
        a = self.src.read(Window(r0, r1, c0, c1)).astype(np.float32, copy=False)
        if a.ndim == 2:
            a = a[..., None]
        return _apply(_apply(a, 0, iy, wy, r0), 1, ix, wx, c0)


def _nearest(n_model: int, n_in: int, start: int, stop: int) -> np.ndarray:
    return np.minimum(((np.arange(start, stop) + 0.5) * (n_model / n_in)).astype(np.int64), n_model - 1)


def labels_to_input(model_labels: np.ndarray, out: np.ndarray,
                    scores: np.ndarray | None = None) -> tuple[int, np.ndarray | None]:
    """Fill `out` (the input-sized canvas: array or memmap) from labels at the model's scale by
    nearest neighbour, then renumber 1..n; returns n and the scores reordered to match."""
    hm, wm = model_labels.shape
    h, w = out.shape
    cols = _nearest(wm, w, 0, w)
    top = 0
    for y0 in range(0, h, BAND):
        rows = _nearest(hm, h, y0, min(y0 + BAND, h))
        band = np.asarray(model_labels[int(rows.min()):int(rows.max()) + 1])
        out[y0:y0 + len(rows)] = band[rows - rows.min()][:, cols]
        top = max(top, int(out[y0:y0 + len(rows)].max(initial=0)))
    present = np.zeros(top + 1, bool)
    for y0 in range(0, h, BAND):
        present[np.asarray(out[y0:y0 + BAND])] = True
    present[0] = False
    kept = np.flatnonzero(present)
    lut = np.zeros(top + 1, out.dtype)
    lut[kept] = np.arange(1, len(kept) + 1, dtype=out.dtype)
    for y0 in range(0, h, BAND):
        out[y0:y0 + BAND] = lut[np.asarray(out[y0:y0 + BAND])]
    new_scores = None
    if scores is not None:
        new_scores = np.asarray([scores[k - 1] if 0 < k <= len(scores) else np.nan for k in kept], np.float32)
    return len(kept), new_scores
