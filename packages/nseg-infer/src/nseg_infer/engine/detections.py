"""Mask R-CNN detections into a label image, in numpy (kept out of the ONNX graph so TensorRT can
build the detector): box NMS, each MxM mask probability resampled into its box (`box_mask`), and
the merger that pastes tile detections into the image's label canvas.

Each detection is kept by the tile whose core holds its box centre. Two tiles see a nucleus near a
core edge with slightly different boxes, so their centres can fall on either side of the edge:
detections whose centre lies just outside the core are held back and pasted at the end, and any
detection whose mask mostly covers an instance already kept is a duplicate.
"""

from __future__ import annotations

import numpy as np

from nseg_infer.engine.tiling import Tile


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes (x1, y1, x2, y2) kept by greedy NMS, highest score first."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
        h = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
        inter = w * h
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _resample(mask: np.ndarray, box: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Bilinear sample of an MxM mask (spanning the box) at the pixel centres y0..y1 x x0..x1."""
    m = mask.shape[0]
    bw = max(float(box[2] - box[0]), 1e-6)
    bh = max(float(box[3] - box[1]), 1e-6)
    u = np.clip((np.arange(x0, x1) + 0.5 - box[0]) / bw * m - 0.5, 0, m - 1)
    v = np.clip((np.arange(y0, y1) + 0.5 - box[1]) / bh * m - 0.5, 0, m - 1)
    u0 = np.floor(u).astype(np.int64)
    v0 = np.floor(v).astype(np.int64)
    u1 = np.minimum(u0 + 1, m - 1)
    v1 = np.minimum(v0 + 1, m - 1)
    fu = (u - u0)[None, :]
    fv = (v - v0)[:, None]
    top = mask[v0][:, u0] * (1 - fu) + mask[v0][:, u1] * fu
    bot = mask[v1][:, u0] * (1 - fu) + mask[v1][:, u1] * fu
    return top * (1 - fv) + bot * fv


def box_mask(box: np.ndarray, mask: np.ndarray, shape: tuple[int, int],
             mask_threshold: float) -> tuple[int, int, np.ndarray] | None:
    """(y0, x0, boolean window) of one MxM mask probability pasted into an HxW image, or None
    when its box misses the image."""
    h, w = shape
    y0, x0 = max(int(np.floor(box[1])), 0), max(int(np.floor(box[0])), 0)
    y1, x1 = min(int(np.ceil(box[3])), h), min(int(np.ceil(box[2])), w)
    if y1 <= y0 or x1 <= x0:
        return None
    return y0, x0, _resample(mask, box, y0, y1, x0, x1) > mask_threshold


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
