"""Mask R-CNN post-processing in numpy: box NMS and pasting MxM mask probabilities into an image.

Kept out of the ONNX graph on purpose (see architecture.md) so TensorRT can build the detector.
"""

from __future__ import annotations

import numpy as np


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


def paste_masks(boxes: np.ndarray, masks: np.ndarray, scores: np.ndarray, shape: tuple[int, int], *,
                mask_threshold: float = 0.5, min_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paste N mask probabilities ([N,1,M,M] or [N,M,M], each spanning its box x1,y1,x2,y2) into an
    HxW uint32 label image. Higher scores are pasted first and keep contested pixels, so instances
    never overlap. Returns (labels, scores) where scores[k] belongs to label k + 1."""
    labels = np.zeros(shape, dtype=np.uint32)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    m = np.asarray(masks, dtype=np.float32)
    if m.ndim == 4:
        m = m[:, 0]
    if not (len(b) == len(s) == len(m)):
        raise ValueError(f"boxes {len(b)}, scores {len(s)} and masks {len(m)} disagree in count")
    kept_scores: list[float] = []
    for i in np.argsort(-s, kind="stable"):
        pasted = box_mask(b[i], m[i], shape, mask_threshold)
        if pasted is None:
            continue
        y0, x0, fg = pasted
        region = labels[y0:y0 + fg.shape[0], x0:x0 + fg.shape[1]]
        fg &= region == 0
        if fg.sum() <= max(min_size - 1, 0) or not fg.any():
            continue
        kept_scores.append(float(s[i]))
        region[fg] = len(kept_scores)
    return labels, np.asarray(kept_scores, dtype=np.float32)
