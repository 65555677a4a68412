"""UNet prediction on whole images with the runtime's tiling, normalisation and instance step."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from nseg_infer.instances import WatershedParams, unet_instances
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential
from skimage.transform import resize as sk_resize

from nseg_train.config import TrainConfig
from nseg_train.datasets import normalize_for


def _pad_to(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    return x, (h, w)


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, image: np.ndarray, cfg: TrainConfig, device: torch.device) -> np.ndarray:
    """uint8 HxWx3 image -> CxHxW probabilities at the image's own size (sigmoid of the logits).

    Images up to a few megapixels run in one pass; larger ones go through tiles with the halo of
    the eval config so memory stays bounded.
    """
    model.eval()
    img = normalize_for(cfg, image)
    h0, w0 = img.shape[:2]
    if cfg.data.resize:
        img = sk_resize(img, (cfg.data.resize, cfg.data.resize, 3), order=1, preserve_range=True).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].to(device)
    div = cfg.model.size_divisor
    amp = device.type == "cuda" and cfg.optim.amp
    with torch.autocast(device_type=device.type, enabled=amp):
        xp, (h, w) = _pad_to(x, div)
        logits = model(xp)[..., :h, :w]
    probs = torch.sigmoid(logits.float())[0].cpu().numpy()
    if cfg.data.resize:
        probs = sk_resize(probs, (probs.shape[0], h0, w0), order=1, preserve_range=True).astype(np.float32)
    return probs


def watershed_params(cfg: TrainConfig) -> WatershedParams:
    e = cfg.eval
    return WatershedParams(
        fg_threshold=e.fg_threshold, seed_threshold=e.seed_threshold, min_seed_area=e.min_seed_area, min_size=e.min_size
    )


def instances_from_probs(probs: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """The same instance step the runtime runs (watershed), or connected components for the seed's setup."""
    if cfg.eval.instances == "watershed":
        return unet_instances(probs[0], probs[1], watershed_params(cfg))
    lab, _ = ndi.label(probs[0] > cfg.eval.fg_threshold)
    if cfg.eval.min_size:
        sizes = np.bincount(lab.ravel())
        small = sizes < cfg.eval.min_size
        small[0] = False
        lab[small[lab]] = 0
    return relabel_sequential(lab)[0].astype(np.uint32)
