"""Tiny checkpoints in the real nseg-checkpoint/1 format, built with nseg_train's own config and builders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# --import-mode=importlib keeps test folders off sys.path; the helper module has a package-unique name.
sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config: pytest.Config) -> None:
    # The CPU is shared: two threads keep the suite from starving a training run.
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def disc_sample(rng: np.random.Generator, h: int, w: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), np.uint32)
    for i in range(1, n + 1):
        r = rng.uniform(4, 9)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = i
    img = np.where(labels > 0, 180.0, 40.0) + rng.normal(0, 8, (h, w))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2), labels


def tiny_unet_config():
    from nseg_train.config import load_config

    cfg = load_config("unet")
    return cfg.replace(
        model=cfg.model.__class__(kind="unet", targets="fg_dist", channels=(8, 16, 32), strides=(2, 2),
                                  num_res_units=1, norm="batch"),
        eval=cfg.eval.__class__(tile=128, halo=16, min_size=8),
    )


def make_unet_checkpoint(path: Path, steps: int = 30, cfg=None) -> Path:
    """A few dozen Adam steps on synthetic discs: outputs that look like a model's, not like noise near 0.5."""
    from nseg_train.checkpoint import FORMAT, save_atomic, versions
    from nseg_train.datasets import normalize_for
    from nseg_train.models import MODEL_BUILDERS
    from nseg_train.targets import make_targets

    torch.manual_seed(0)
    cfg = cfg or tiny_unet_config()
    model = MODEL_BUILDERS["unet"](cfg.model)
    rng = np.random.default_rng(0)
    data = [disc_sample(rng, 48, 48, 4) for _ in range(6)]
    x = torch.from_numpy(np.stack([normalize_for(cfg, im).transpose(2, 0, 1) for im, _ in data]))
    y = torch.from_numpy(np.stack([make_targets(lab, cfg.model.targets) for _, lab in data]))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    ckpt = {
        "format": FORMAT, "kind": "unet", "config": cfg.to_dict(), "model": model.state_dict(), "epoch": 0,
        "step": steps, "optimizer": None, "scheduler": None, "scaler": None, "splits": {},
        "splits_sha256": "0" * 64, "metrics": {"val_dsb": 0.5, "train_loss": float(loss.detach())}, "versions": versions(),
    }
    save_atomic(ckpt, path)
    return path


@pytest.fixture(scope="session")
def unet_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_unet_checkpoint(tmp_path_factory.mktemp("ckpt") / "unet.pt")


@pytest.fixture(scope="session")
def unet_bundle(unet_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nseg_export.onnx_export import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("bundle") / "unet"
    export_checkpoint(unet_ckpt, out, ExportOptions(fp16=True))
    return out


def tiny_maskrcnn_config():
    from nseg_train.config import config_from_dict

    return config_from_dict({
        "name": "tiny-maskrcnn", "model": {"kind": "maskrcnn"}, "optim": {"loss": "dice"},
        "eval": {"tile": 64, "halo": 8, "min_size": 4},
        # The shipped preset's parts (GroupNorm heads, C2-C4, adaptive RoIAlign) at toy widths: a
        # GroupNorm mask head must export so that a tile with no detections still runs.
        "maskrcnn": {"backbone": "resnet18_fpn", "tile": 64, "box_representation_size": 32, "mask_head_channels": 8,
                     "mask_head_convs": 2, "fpn_channels": 32, "backbone_stages": 3, "anchor_sizes": [8, 16, 32, 64],
                     "roi_sampling_ratio": 0, "head_norm": "group"},
    })


def make_maskrcnn_checkpoint(path: Path) -> Path:
    """An untrained tiny Mask R-CNN whose classifier is shifted so that a blank tile yields zero
    detections and a blob tile a few: both graph paths (empty and non-empty outputs) get exercised."""
    from nseg_train.checkpoint import FORMAT, save_atomic, versions
    from nseg_train.datasets import normalize_for
    from nseg_train.models import build_model_for

    from nseg_export.parity import blob_image

    cfg = tiny_maskrcnn_config()
    rng = np.random.default_rng(0)
    tiles = [normalize_for(cfg, np.full((64, 64, 3), 30, np.uint8)), normalize_for(cfg, blob_image(rng, 64, 64))]
    scale = 20.0
    for seed in range(20):
        # Untrained, the classifier ranks proposals arbitrarily; take the first initialisation whose
        # blob tile outranks the blank one, so a threshold between them exists.
        torch.manual_seed(seed)
        model = build_model_for(cfg).eval()
        logits: list[torch.Tensor] = []
        cls = model.roi_heads.box_predictor.cls_score
        hook = cls.register_forward_hook(lambda mod, inp, out, acc=logits: acc.append(out.detach()))
        with torch.no_grad():
            for x in tiles:
                model([torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))])
        hook.remove()
        # Two-class softmax score > 0.5 iff (fg - bg logit) > 0: put zero between the blank tile's best and
        # the blob tile's 3rd best, and scale so scores sit far from the threshold.
        blank_best = float((logits[0][:, 1] - logits[0][:, 0]).max()) * scale
        blob_third = float(torch.topk((logits[1][:, 1] - logits[1][:, 0]) * scale, 3).values[-1])
        if blob_third > blank_best + 1.0:
            break
    else:
        raise RuntimeError("no initialisation separates blank from blob tiles")
    with torch.no_grad():
        cls.weight.mul_(scale)
        cls.bias.mul_(scale)
        cls.bias[1] -= (blank_best + blob_third) / 2
    ckpt = {
        "format": FORMAT, "kind": "maskrcnn", "config": cfg.to_dict(), "model": model.state_dict(), "epoch": 0,
        "step": 0, "optimizer": None, "scheduler": None, "scaler": None, "splits": {},
        "splits_sha256": "1" * 64, "metrics": {"val_dsb": 0.1}, "versions": versions(),
    }
    save_atomic(ckpt, path)
    return path


@pytest.fixture(scope="session")
def maskrcnn_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_maskrcnn_checkpoint(tmp_path_factory.mktemp("ckpt") / "maskrcnn.pt")


@pytest.fixture(scope="session")
def maskrcnn_bundle(maskrcnn_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nseg_export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("bundle") / "maskrcnn"
    export_checkpoint(maskrcnn_ckpt, out)
    return out
