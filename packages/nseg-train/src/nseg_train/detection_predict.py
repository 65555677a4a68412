"""Mask R-CNN prediction on whole images, step for step as the runtime does it.

nseg_infer's runtime feeds the exported graph one fixed-size tile at a time (zero padding past
the image, small images padded to a full tile), keeps each detection in the tile whose core holds
its box centre and pastes masks in numpy. Validation runs the same grid and merger on the torch
model, so a validation score is the score a user gets from the bundle.
"""

from __future__ import annotations

import numpy as np
import torch
from nseg_infer.stitch import MaskRCNNMerger
from nseg_infer.tiling import Tile, Window, tile_grid
from skimage.transform import resize as sk_resize

from nseg_train.config import TrainConfig
from nseg_train.datasets import normalize_for

SIZE_DIVISOR = 32  # torchvision's detection transform pads to multiples of 32


def read_window(image: np.ndarray, window: Window) -> np.ndarray:
    """HxWx3 float32 crop of a normalised image; outside the image is zero (mirrored nuclei
    would be detected)."""
    h, w = image.shape[:2]
    v = window.clip(h, w)
    x = image[v.slices]
    pads = ((v.y0 - window.y0, window.y1 - v.y1), (v.x0 - window.x0, window.x1 - v.x1), (0, 0))
    if any(p for pp in pads for p in pp):
        x = np.pad(x, pads)
    return np.ascontiguousarray(x, dtype=np.float32)


def tiles_for(height: int, width: int, tile: int, halo: int) -> list[Tile]:
    grid = tile_grid(max(height, tile - 2 * halo), max(width, tile - 2 * halo), tile, halo, SIZE_DIVISOR)
    return [Tile(t.index, t.read, t.core.clip(height, width)) for t in grid.tiles if t.core.y0 < height and t.core.x0 < width]


@torch.inference_mode()
def detect(model: torch.nn.Module, x: np.ndarray, device: torch.device, *, amp: bool = False) -> dict[str, np.ndarray]:
    """One HxWx3 normalised tile -> boxes [N,4], scores [N], masks [N,1,M,M] (probabilities)."""
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).to(device)
    with torch.autocast(device_type=device.type, enabled=amp):
        out = model([t])[0]
    return {k: out[k].float().cpu().numpy() for k in ("boxes", "scores", "masks")}


def predict_maskrcnn(model: torch.nn.Module, image: np.ndarray, cfg: TrainConfig, device: torch.device) -> np.ndarray:
    """uint8 HxWx3 image -> HxW uint32 instance labels (0 where nothing was detected)."""
    model.eval()
    m = cfg.maskrcnn
    img = normalize_for(cfg, image)
    h0, w0 = img.shape[:2]
    if cfg.data.resize:
        img = sk_resize(img, (cfg.data.resize, cfg.data.resize, 3), order=1, preserve_range=True).astype(np.float32)
    h, w = img.shape[:2]
    canvas = np.zeros((h, w), dtype=np.uint32)
    merger = MaskRCNNMerger(
        canvas, score_threshold=m.box_score_thresh, mask_threshold=m.mask_threshold,
        nms_threshold=m.box_nms_thresh, min_size=cfg.eval.min_size,
    )
    amp = device.type == "cuda" and cfg.optim.amp
    for tile in tiles_for(h, w, m.tile, cfg.eval.halo):
        merger.aggregate(detect(model, read_window(img, tile.read), device, amp=amp), tile)
    labels = merger.finalize()[0]
    if (h, w) != (h0, w0):
        labels = sk_resize(labels, (h0, w0), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint32)
    return labels
