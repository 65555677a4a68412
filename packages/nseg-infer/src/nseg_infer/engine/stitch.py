"""Merging tile outputs into seamless instances.

UNet: tile probability maps are blended with weights that vanish where a tile saw its own
artificial edge, and instances are derived from the blended field, never per tile. For images
too large for one pass the field is cut into blocks with a margin; instance extraction is run on
block + margin and each foreground clump is kept only by the block whose core holds its anchor
(the top-left corner of its bounding box). Foreground clumps are independent under the
marker-controlled watershed, so any clump that fits inside the margin is labelled exactly as a
one-pass run labels it.

Mask R-CNN: each detection is kept by the tile whose core holds its box centre. Two tiles see a
nucleus near a core edge with slightly different boxes, so their centres can fall on either side
of the edge: detections whose centre lies just outside the core are held back and pasted at the
end, and any detection whose mask mostly covers an instance already kept is a duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from nseg_infer.engine.instances import InstanceParams, WatershedParams, nms
from nseg_infer.engine.maskpaste import box_mask
from nseg_infer.engine.tiling import Block, Tile, TileGrid, blend_weights, block_grid, cut_by_margin
from nseg_infer.regions import Window

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


def block_instances(fg: np.ndarray, dist: np.ndarray | None, params: InstanceParams, block: Block,
                    image_shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Instances of `block`: fg/dist cover block.outer; returns (labels over block.outer holding only
    the clumps this block owns, numbered 1..k, number of owned clumps cut by the margin)."""
    labels = params.instances(fg, dist)
    clumps, n = ndi.label(fg > params.fg_threshold, structure=_CONN8)
    if n == 0:
        return labels, 0
    o, c = block.outer, block.core
    own = np.zeros(n + 1, bool)
    cut = 0
    for i, sl in enumerate(ndi.find_objects(clumps), start=1):
        if sl is not None and c.contains(sl[0].start + o.y0, sl[1].start + o.x0):
            own[i] = True
            # A clump cut by the margin is not guaranteed the one-pass labelling.
            cut += cut_by_margin(Window(sl[0].start, sl[0].stop, sl[1].start, sl[1].stop), o, image_shape)
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
    """Pastes each tile's detections into a label canvas (`aggregate(outputs, tile)` per tile, then
    `finalize()`). A detection is kept by the tile whose core holds its box centre; one whose centre
    lies within `slack` pixels outside the core is held back and pasted at `finalize()` unless an
    instance already covers it. A detection is a duplicate, and dropped, when its mask and a kept
    instance's overlap by more than `duplicate_overlap` of the smaller of the two; otherwise it
    takes only the pixels nobody holds. `scores[k]` is the score of label k + 1."""

    def __init__(self, canvas: np.ndarray, *, score_threshold: float = 0.5, mask_threshold: float = 0.5,
                 nms_threshold: float = 0.5, min_size: int = 0, slack: int = 8,
                 duplicate_overlap: float = 0.5) -> None:
        self.canvas = canvas
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.nms_threshold = nms_threshold
        self.min_size = min_size
        self.slack = slack
        self.duplicate_overlap = duplicate_overlap
        self.scores: list[float] = []
        self._areas: list[int] = [0]  # pixels held by label k (index 0 unused)
        self._held: list[tuple[float, int, int, np.ndarray]] = []  # (score, y0, x0, mask) in image coordinates

    def aggregate(self, outputs: dict[str, np.ndarray], tile: Tile) -> int:
        boxes = np.asarray(outputs["boxes"], np.float64).reshape(-1, 4)
        scores = np.asarray(outputs["scores"], np.float64).reshape(-1)
        masks = np.asarray(outputs["masks"], np.float32)
        if masks.ndim == 5:  # exporters that keep the batch axis: [1, N, 1, M, M]
            masks = masks[0]
        if masks.ndim == 4:
            masks = masks[:, 0]
        r, c = tile.read, tile.core
        idx = np.flatnonzero(scores >= self.score_threshold)
        if idx.size == 0:
            return 0
        idx = idx[nms(boxes[idx], scores[idx], self.nms_threshold)]
        # Box centres in image coordinates decide which tile is responsible.
        cy = (boxes[idx, 1] + boxes[idx, 3]) / 2 + r.y0
        cx = (boxes[idx, 0] + boxes[idx, 2]) / 2 + r.x0
        s = self.slack
        owned = (cy >= c.y0) & (cy < c.y1) & (cx >= c.x0) & (cx < c.x1)
        h, w = self.canvas.shape
        near = (~owned & (cy >= max(c.y0 - s, 0)) & (cy < min(c.y1 + s, h))
                & (cx >= max(c.x0 - s, 0)) & (cx < min(c.x1 + s, w)))
        kept = 0
        for j in np.argsort(-scores[idx], kind="stable"):
            if not (owned[j] or near[j]):
                continue
            i = idx[j]
            # Pasted within the part of the tile's window inside the image (the rest is padding).
            vis = r.clip(h, w)
            shift = np.array([vis.x0 - r.x0, vis.y0 - r.y0] * 2, np.float64)
            pasted = box_mask(boxes[i] - shift, masks[i], vis.shape, self.mask_threshold)
            if pasted is None:
                continue
            y0, x0, fg = pasted
            y0, x0 = y0 + vis.y0, x0 + vis.x0
            if owned[j]:
                kept += self._paste(float(scores[i]), y0, x0, fg)
            else:
                self._held.append((float(scores[i]), y0, x0, fg))
        return kept

    def _paste(self, score: float, y0: int, x0: int, fg: np.ndarray) -> int:
        region = self.canvas[y0:y0 + fg.shape[0], x0:x0 + fg.shape[1]]
        under = region[fg]
        area = int(fg.sum())
        if under.any():
            ids, inter = np.unique(under[under > 0], return_counts=True)
            areas = np.asarray(self._areas, np.int64)[ids]
            if (inter > self.duplicate_overlap * np.minimum(areas, area)).any():
                return 0
        fg = fg & (region == 0)
        n = int(fg.sum())
        if n == 0 or n < self.min_size:
            return 0
        self.scores.append(score)
        self._areas.append(n)
        region[fg] = len(self.scores)
        return 1

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        held, self._held = self._held, []
        for score, y0, x0, fg in sorted(held, key=lambda t: -t[0]):
            self._paste(score, y0, x0, fg)
        return self.canvas, np.asarray(self.scores, np.float32)
