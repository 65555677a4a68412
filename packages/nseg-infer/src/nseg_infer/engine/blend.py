"""Blending UNet tile outputs into one field: each tile's output weighted by `blend_weights`,
which vanish where the tile saw its own artificial edge, so instances are derived from the blended
field, never per tile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nseg_infer.engine.tiling import Tile, TileGrid
from nseg_infer.regions import Window


def blend_weights(shape: tuple[int, int], halo: int) -> np.ndarray:
    """Per-pixel weights for one tile's output: zero in the outer quarter of the halo, where
    the network saw the artificial tile edge, then a cosine ramp up to 1 at the core."""
    def ramp(n: int) -> np.ndarray:
        if halo == 0:
            return np.ones(n, np.float32)
        d = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float64) + 0.5
        dead = halo / 4.0
        t = np.clip((d - dead) / (halo - dead), 0.0, 1.0)
        return (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)
    return np.outer(ramp(shape[0]), ramp(shape[1]))


class UNetMerger:
    """Weighted blend of [N, C, h, w] tile outputs over one window of the image (MONAI-merger shape)."""

    def __init__(self, grid: TileGrid, window: Window | None = None, channels: int = 2) -> None:
        self.grid = grid
        self.window = window or Window(0, grid.height, 0, grid.width)
        h, w = self.window.shape
        self.acc = np.zeros((channels, h, w), np.float32)
        self.wsum = np.zeros((h, w), np.float32)
        self._weights = blend_weights(grid.tile_shape, grid.halo)

    def aggregate(self, outputs: np.ndarray, tiles: Sequence[Tile]) -> None:
        if len(outputs) != len(tiles):
            raise ValueError(f"{len(outputs)} outputs for {len(tiles)} tiles")
        win = self.window
        for out, t in zip(outputs, tiles, strict=True):
            r = t.read
            y0, y1 = max(r.y0, win.y0), min(r.y1, win.y1)
            x0, x1 = max(r.x0, win.x0), min(r.x1, win.x1)
            if y0 >= y1 or x0 >= x1:
                continue
            src = (slice(y0 - r.y0, y1 - r.y0), slice(x0 - r.x0, x1 - r.x0))
            dst = (slice(y0 - win.y0, y1 - win.y0), slice(x0 - win.x0, x1 - win.x0))
            wt = self._weights[src]
            self.acc[(slice(None), *dst)] += out[(slice(None), *src)] * wt
            self.wsum[dst] += wt

    def finalize(self) -> np.ndarray:
        """[C, h, w] blended field. Every image pixel is in some tile core, where weights are 1."""
        if (self.wsum <= 0).any():
            raise RuntimeError("blend has uncovered pixels: tile grid does not cover the window")
        self.acc /= self.wsum
        return self.acc
