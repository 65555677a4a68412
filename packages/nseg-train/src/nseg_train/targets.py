"""Training targets from instance labels (numpy): foreground and per-nucleus normalised distance."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def normalized_distance(labels: np.ndarray) -> np.ndarray:
    """Distance to the nucleus edge divided by that nucleus' maximum: 1 at each centre, 0 outside.

    Per-nucleus normalisation makes seeds (distance > t) scale-free, so one threshold serves
    8-pixel and 80-pixel nuclei alike.
    """
    out = np.zeros(labels.shape, dtype=np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        # One pixel of padding so a nucleus touching the crop edge still has a border.
        sl_pad = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        m = labels[sl_pad] == i
        d = ndi.distance_transform_edt(m)
        mx = d.max()
        if mx > 0:
            out[sl_pad][m] = (d[m] / mx).astype(np.float32)
    return out


def make_targets(labels: np.ndarray, kind: str) -> np.ndarray:
    """CxHxW float32: 'fg' -> [fg], 'fg_dist' -> [fg, dist]."""
    fg = (labels > 0).astype(np.float32)
    if kind == "fg":
        return fg[None]
    if kind == "fg_dist":
        return np.stack([fg, normalized_distance(labels)])
    raise ValueError(f"unknown target kind {kind!r}")
