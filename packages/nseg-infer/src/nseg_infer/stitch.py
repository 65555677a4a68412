"""Merging tile outputs into seamless instances.

UNet: tile probability maps are blended with weights that vanish where a tile saw its own
artificial edge, and instances are derived from the blended field, never per tile. For images
too large for one pass the field is cut into blocks with a margin; instance extraction is run on
block + margin and each foreground clump is kept only by the block whose core holds its anchor
(the top-left corner of its bounding box). Foreground clumps are independent under the
marker-controlled watershed, so any clump that fits inside the margin is labelled exactly as a
one-pass run labels it.

Mask R-CNN: each detection is kept only by the tile whose core holds its box centre; labels are
offset so they stay unique across tiles.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from nseg_infer.instances import WatershedParams, nms, paste_masks, unet_instances
from nseg_infer.tiling import Block, Tile, TileGrid, Window, blend_weights, block_grid

log = logging.getLogger(__name__)

_CONN8 = np.ones((3, 3), dtype=bool)


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


def block_instances(fg: np.ndarray, dist: np.ndarray, params: WatershedParams, block: Block,
                    image_shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Instances of `block`: fg/dist cover block.outer; returns (labels over block.outer holding only
    the clumps this block owns, numbered 1..k, number of owned clumps cut by the margin)."""
    labels = unet_instances(fg, dist, params)
    clumps, n = ndi.label(fg > params.fg_threshold, structure=_CONN8)
    if n == 0:
        return labels, 0
    o, c = block.outer, block.core
    objs = ndi.find_objects(clumps)
    # Touching the outer window where it is not the image edge means the clump may continue
    # outside, so its labelling is not guaranteed to match the one-pass result.
    edge = np.zeros(n + 1, bool)
    if o.y0 > 0:
        edge[np.unique(clumps[0])] = True
    if o.y1 < image_shape[0]:
        edge[np.unique(clumps[-1])] = True
    if o.x0 > 0:
        edge[np.unique(clumps[:, 0])] = True
    if o.x1 < image_shape[1]:
        edge[np.unique(clumps[:, -1])] = True
    own = np.zeros(n + 1, bool)
    for i, sl in enumerate(objs, start=1):
        if sl is not None and c.contains(sl[0].start + o.y0, sl[1].start + o.x0):
            own[i] = True
    cut = int((own & edge).sum())
    keep = own[clumps]
    labels = np.where(keep, labels, 0).astype(np.uint32)
    uniq = np.unique(labels)
    uniq = uniq[uniq > 0]
    lut = np.zeros(int(labels.max()) + 1, np.uint32)
    lut[uniq] = np.arange(1, len(uniq) + 1, dtype=np.uint32)
    return lut[labels], cut


def paste_block(canvas: np.ndarray, block_labels: np.ndarray, window: Window, offset: int) -> None:
    """Write a block's owned instances into the image-wide label canvas, offset to stay unique;
    pixels already owned by another block are never overwritten."""
    dst = canvas[window.slices]
    m = (block_labels > 0) & (dst == 0)
    dst[m] = block_labels[m].astype(canvas.dtype) + canvas.dtype.type(offset)


def instances_blockwise(fg: np.ndarray, dist: np.ndarray, params: WatershedParams, *, block: int,
                        margin: int) -> tuple[np.ndarray, int]:
    """Block-wise `unet_instances` over a whole field; equals the one-pass labelling up to label
    numbering for every clump smaller than the margin. Returns (labels, clumps cut by a margin)."""
    h, w = fg.shape
    out = np.zeros((h, w), np.uint32)
    count = cut_total = 0
    for b in block_grid(h, w, block, margin):
        lab, cut = block_instances(fg[b.outer.slices], dist[b.outer.slices], params, b, (h, w))
        paste_block(out, lab, b.outer, count)
        count += int(lab.max())
        cut_total += cut
    return out, cut_total


class MaskRCNNMerger:
    """Pastes each tile's detections into a label canvas, keeping a detection only in the tile
    whose core holds its box centre. `scores[k]` is the score of label k + 1."""

    def __init__(self, canvas: np.ndarray, *, score_threshold: float = 0.5, mask_threshold: float = 0.5,
                 nms_threshold: float = 0.5, min_size: int = 0) -> None:
        self.canvas = canvas
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.nms_threshold = nms_threshold
        self.min_size = min_size
        self.scores: list[float] = []

    def aggregate(self, outputs: dict[str, np.ndarray], tile: Tile) -> int:
        boxes = np.asarray(outputs["boxes"], np.float64).reshape(-1, 4)
        scores = np.asarray(outputs["scores"], np.float64).reshape(-1)
        masks = np.asarray(outputs["masks"], np.float32)
        if masks.ndim == 5:  # exporters that keep the batch axis: [1, N, 1, M, M]
            masks = masks[0]
        r, c = tile.read, tile.core
        ok = scores >= self.score_threshold
        if ok.any():
            # Box centres in image coordinates; only the responsible tile keeps a detection.
            cy = (boxes[:, 1] + boxes[:, 3]) / 2 + r.y0
            cx = (boxes[:, 0] + boxes[:, 2]) / 2 + r.x0
            ok &= (cy >= c.y0) & (cy < c.y1) & (cx >= c.x0) & (cx < c.x1)
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            return 0
        idx = idx[nms(boxes[idx], scores[idx], self.nms_threshold)]
        local, kept = paste_masks(boxes[idx], masks[idx], scores[idx], r.shape,
                                  mask_threshold=self.mask_threshold, min_size=self.min_size)
        h, w = self.canvas.shape
        vis = r.clip(h, w)
        part = local[vis.y0 - r.y0:vis.y1 - r.y0, vis.x0 - r.x0:vis.x1 - r.x0]
        dst = self.canvas[vis.slices]
        m = (part > 0) & (dst == 0)
        dst[m] = part[m].astype(self.canvas.dtype) + self.canvas.dtype.type(len(self.scores))
        self.scores.extend(kept.tolist())
        return len(kept)

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        return self.canvas, np.asarray(self.scores, np.float32)
