"""Stack per-nucleus binary masks into one label image, keeping what stacking hides for QC."""

from __future__ import annotations

import numpy as np

from nseg_data.errors import DataError


def stack_masks(
    masks: list[tuple[str, np.ndarray]], shape: tuple[int, int], *, source: str
) -> tuple[np.ndarray, dict]:
    """(name, HxW bool) pairs to (HxW uint32 labels, meta).

    Label i is the i-th mask. Where masks overlap the later one wins, so meta records the overlap
    pixels, the masks involved and the empty masks: QC reports them instead of them vanishing.
    """
    labels = np.zeros(shape, dtype=np.uint32)
    overlap = 0
    overlapping: list[str] = []
    empty: list[str] = []
    for i, (name, m) in enumerate(masks, start=1):
        if m.shape != tuple(shape):
            raise DataError(name, f"mask is {m.shape[1]}x{m.shape[0]}, image is {shape[1]}x{shape[0]}")
        if not m.any():
            empty.append(name)
            continue
        hit = labels[m]
        n_hit = int(np.count_nonzero(hit))
        if n_hit:
            overlap += n_hit
            overlapping.append(name)
            overlapping += [masks[int(j) - 1][0] for j in np.unique(hit[hit > 0])]
        labels[m] = i
    meta = {
        "n_masks": len(masks),
        "overlap_pixels": overlap,
        "overlapping_masks": sorted(set(overlapping)),
        "empty_masks": empty,
    }
    return labels, meta
