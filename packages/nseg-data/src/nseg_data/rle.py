"""Run-length encoding in Kaggle's DSB 2018 convention.

Pixels are numbered column-major (top to bottom, then left to right), starting at 1. An encoding
is "start length start length ...", runs sorted and not overlapping (Kaggle rejected anything else).
"""

from __future__ import annotations

import numpy as np

from nseg_data.errors import DataError


def encode(mask: np.ndarray) -> str:
    """Binary HxW mask to a Kaggle RLE string ("" for an empty mask)."""
    return " ".join(str(int(v)) for v in encode_runs(mask))


def encode_runs(mask: np.ndarray) -> np.ndarray:
    """Binary HxW mask to the flat array [start1, len1, start2, len2, ...] (1-indexed starts)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    flat = np.concatenate([[0], (m.T.ravel() > 0).astype(np.int8), [0]])
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # 1-indexed positions where a run starts/ends
    edges[1::2] -= edges[::2]
    return edges.astype(np.int64)


def parse(rle: str | float | None, *, source: str) -> np.ndarray:
    """RLE text to an (n, 2) int64 array of (start, length); empty or NaN gives no runs."""
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return np.zeros((0, 2), dtype=np.int64)
    tokens = str(rle).split()
    if len(tokens) % 2:
        raise DataError(source, f"RLE has an odd number of values ({len(tokens)})")
    try:
        vals = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError as exc:
        raise DataError(source, f"RLE holds a non-integer value ({exc})") from exc
    runs = vals.reshape(-1, 2)
    if len(runs) and (runs[:, 0] < 1).any():
        raise DataError(source, "RLE start below 1 (starts are 1-indexed)")
    if len(runs) and (runs[:, 1] < 1).any():
        raise DataError(source, "RLE run length below 1")
    if len(runs) > 1 and (runs[1:, 0] < runs[:-1, 0] + runs[:-1, 1]).any():
        raise DataError(source, "RLE runs are not sorted or overlap")
    return runs


def decode(rle: str | float | None, shape: tuple[int, int], *, source: str = "<rle>") -> np.ndarray:
    """Kaggle RLE to a HxW bool mask. A run past the last pixel raises DataError naming `source`."""
    h, w = int(shape[0]), int(shape[1])
    runs = parse(rle, source=source)
    flat = np.zeros(h * w + 1, dtype=np.int8)
    if len(runs):
        last = int(runs[-1, 0] + runs[-1, 1] - 1)
        if last > h * w:
            raise DataError(source, f"RLE runs to pixel {last}, past the end of the {w}x{h} image ({h * w} pixels)")
        # +1 at each run start, -1 after each run end, then a running sum marks the runs.
        np.add.at(flat, runs[:, 0] - 1, 1)
        np.add.at(flat, runs[:, 0] - 1 + runs[:, 1], -1)
    return np.cumsum(flat[:-1], dtype=np.int8).astype(bool).reshape(w, h).T


def labels_to_rles(labels: np.ndarray) -> list[str]:
    """One RLE per instance, in label order (what a Kaggle submission holds)."""
    from scipy import ndimage

    lab = np.asarray(labels)
    out = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        crop = lab[sl] == i
        full = np.zeros(lab.shape, dtype=bool)
        full[sl] = crop
        out.append(encode(full))
    return out
