"""The label image as an OME-TIFF that Fiji (Bio-Formats) and QuPath open calibrated.

The pixel size goes in twice: OME-XML PhysicalSizeX/Y in µm (Bio-Formats, QuPath) and the TIFF
resolution tags in pixels per centimetre (readers that ignore OME-XML). Large label images get
a pyramid of SubIFDs, each level half the one above and taken by nearest neighbour (every
`2**k`-th pixel), so labels stay labels and a viewer opens a whole-slide result at once. Tiled
levels are written tile by tile from the canvas (an array or a memmap), never held whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

LABEL_TILE = 256
PYRAMID_MIN_SIDE = 4096   # above this longest side, sub-resolutions are written
PYRAMID_SMALLEST = 1024   # ... down to a level whose longest side is at most this


def pyramid_levels(height: int, width: int) -> int:
    """How many sub-resolutions (0 for images up to PYRAMID_MIN_SIDE)."""
    side = max(height, width)
    if side <= PYRAMID_MIN_SIDE:
        return 0
    n = 0
    while side > PYRAMID_SMALLEST:
        side = -(-side // 2)
        n += 1
    return n


def _tiles(labels: np.ndarray, step: int, dtype: np.dtype) -> Iterator[np.ndarray]:
    """Tiles of labels[::step, ::step], row by row, padded to full tiles with 0."""
    h, w = -(-labels.shape[0] // step), -(-labels.shape[1] // step)
    t = LABEL_TILE
    for y in range(0, h, t):
        band = np.asarray(labels[y * step:(y + t) * step:step, ::step])
        for x in range(0, w, t):
            tile = np.zeros((t, t), dtype)
            part = band[:, x:x + t]
            tile[:part.shape[0], :part.shape[1]] = part
            yield tile


def write_ome_labels(tmp: Path, labels: np.ndarray, dtype: np.dtype, *, tiled: bool,
                     pixel_size_um: tuple[float, float] | None = None, name: str = "") -> None:
    h, w = labels.shape
    levels = pyramid_levels(h, w)
    meta: dict = {"axes": "YX"}
    if name:
        meta["Name"] = name
    res: dict = {}
    if pixel_size_um is not None:
        py, px = pixel_size_um
        meta.update(PhysicalSizeX=px, PhysicalSizeXUnit="µm", PhysicalSizeY=py, PhysicalSizeYUnit="µm")
        res = {"resolution": (1e4 / px, 1e4 / py), "resolutionunit": "CENTIMETER"}
    big = tiled or levels > 0
    with tifffile.TiffWriter(tmp, bigtiff=big, ome=True) as tw:
        if not big:
            tw.write(np.asarray(labels).astype(dtype, copy=False), compression="zlib", photometric="minisblack",
                     metadata=meta, **res)
            return
        t = (LABEL_TILE, LABEL_TILE)
        tw.write(_tiles(labels, 1, dtype), shape=(h, w), dtype=dtype, tile=t, compression="zlib",
                 photometric="minisblack", subifds=levels, metadata=meta, **res)
        for k in range(1, levels + 1):
            f = 2 ** k
            lres = {"resolution": (res["resolution"][0] / f, res["resolution"][1] / f),
                    "resolutionunit": "CENTIMETER"} if res else {}
            tw.write(_tiles(labels, f, dtype), shape=(-(-h // f), -(-w // f)), dtype=dtype, tile=t,
                     compression="zlib", photometric="minisblack", subfiletype=1, metadata=None, **lres)
