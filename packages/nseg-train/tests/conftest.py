"""Synthetic Kaggle-layout data and tiny configs, so the tests need neither the shared data nor a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nseg_data.dataset import load_kaggle_folder
from nseg_data.split import make_splits, save_splits
from PIL import Image

TINY_UNET = """
name: tiny-unet
seed: 1
data: {crop_size: 64, crops_per_image: 2, num_workers: 0}
augment: {scale: [0.8, 1.25], contrast: 0.2, colour: 0.1, grayscale_p: 0.2, invert_p: 0.2, noise: 0.01}
model: {kind: unet, targets: fg_dist, channels: [4, 8, 16], strides: [2, 2], num_res_units: 1}
optim: {lr: 0.01, epochs: 2, batch_size: 4, warmup_epochs: 0}
eval: {every: 1, tile: 128, halo: 16, min_size: 4}
"""


def blob_image(rng: np.random.Generator, h: int, w: int, n: int, kind: str) -> tuple[np.ndarray, list[np.ndarray]]:
    yy, xx = np.mgrid[:h, :w]
    masks, canvas = [], np.zeros((h, w), dtype=bool)
    for _ in range(n * 4):
        if len(masks) == n:
            break
        r = rng.uniform(4, 9)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if (m & canvas).any():
            continue
        canvas |= m
        masks.append(m)
    base = rng.normal(0, 6, (h, w))
    if kind == "fluorescence":
        gray = np.clip(20 + base + 170 * canvas, 0, 255)
        img = np.repeat(gray[..., None], 3, axis=2)
    elif kind == "brightfield":
        gray = np.clip(220 + base - 120 * canvas, 0, 255)
        img = np.repeat(gray[..., None], 3, axis=2)
    else:
        img = np.stack([230 - 110 * canvas, 200 - 150 * canvas, 225 - 60 * canvas], axis=2) + base[..., None]
    return np.clip(img, 0, 255).astype(np.uint8), masks


def write_kaggle(root: Path, n_images: int = 10, seed: int = 0, size: tuple[int, int] = (96, 112)) -> Path:
    rng = np.random.default_rng(seed)
    kinds = ["fluorescence", "fluorescence", "brightfield", "histology"]
    for i in range(n_images):
        sid = f"img{i:03d}"
        img, masks = blob_image(rng, *size, n=int(rng.integers(3, 9)), kind=kinds[i % len(kinds)])
        (root / sid / "images").mkdir(parents=True)
        (root / sid / "masks").mkdir()
        Image.fromarray(img).save(root / sid / "images" / f"{sid}.png")
        for j, m in enumerate(masks):
            Image.fromarray((m * 255).astype(np.uint8)).save(root / sid / "masks" / f"m{j:02d}.png")
    return root


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset dir, splits file) with every split non-empty."""
    base = tmp_path_factory.mktemp("synth")
    root = write_kaggle(base / "stage1_train", n_images=14)
    res = load_kaggle_folder(root)
    assert not res.errors
    splits = make_splits({s.id: str(s.modality) for s in res.samples}, locked_fraction=0.2, val_fraction=0.3)
    save_splits(splits, base / "splits.json")
    return root, base / "splits.json"


@pytest.fixture()
def tiny_config(tmp_path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_UNET)
    return p
