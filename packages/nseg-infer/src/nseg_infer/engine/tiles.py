"""Model input from tiles: each tile's read window normalised, batched NCHW float32.

The one road from pixels to the model: `Predictor.tile_outputs` reads `TileRead`s through
`tile_batches` in a reader thread and runs the backend on each batch.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from nseg_infer.engine.preprocess import apply_norm, as_rgb
from nseg_infer.engine.tiling import Tile
from nseg_infer.regions import ImageSource


@dataclass(frozen=True)
class TileRead:
    """One tile of one image to run the model on: `key` says which image (the caller's own tag),
    `norm` the (low, high) its pixels are normalised by."""

    key: Hashable
    source: ImageSource
    tile: Tile
    norm: tuple[float, float]


def read_tile(src: ImageSource, tile: Tile, lo: float, hi: float, *, bgr: bool = False,
              pad_mode: str = "reflect") -> np.ndarray:
    """HxWx3 float32 normalised read window; parts outside the image are reflected (as an untiled
    run pads the whole image) or zero for detectors, where mirrored nuclei would be detected."""
    r = tile.read
    v = r.clip(*src.shape)
    x = apply_norm(as_rgb(src.read(v), source=str(src.path)), lo, hi)
    if bgr:
        x = x[..., ::-1]
    pads = ((v.y0 - r.y0, r.y1 - v.y1), (v.x0 - r.x0, r.x1 - v.x1), (0, 0))
    if any(p for pp in pads for p in pp):
        x = np.pad(x, pads, mode=pad_mode) if pad_mode == "reflect" else np.pad(x, pads)
    return x


def tile_batches(reads: Iterable[TileRead], batch: int, *, bgr: bool,
                 pad_mode: str) -> Iterator[tuple[list[TileRead], np.ndarray]]:
    """Consecutive reads of one tile shape, up to `batch` at a time, as (reads, NCHW float32)."""
    def stacked(chunk: list[TileRead]) -> tuple[list[TileRead], np.ndarray]:
        x = np.stack([read_tile(r.source, r.tile, *r.norm, bgr=bgr, pad_mode=pad_mode) for r in chunk])
        return chunk, np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    chunk: list[TileRead] = []
    for r in reads:
        if chunk and (len(chunk) == batch or r.tile.read.shape != chunk[0].tile.read.shape):
            yield stacked(chunk)
            chunk = []
        chunk.append(r)
    if chunk:
        yield stacked(chunk)
