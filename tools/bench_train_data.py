#!/usr/bin/env python
"""What a UNet training hour buys: the crop resize, a sample's augmentation and whole steps.

Measured side by side in one process, alternating, so the ratios hold even on a busy machine:
- the crop resize on the same crops, scipy's `ndi.zoom` (the previous implementation, kept here
  only as the reference) against `augment._resize_pair` (torch's bilinear interpolate);
- whole training steps as `nseg-train` runs them (DataLoader workers, forward, backward, AdamW),
  with either resize, in alternating blocks of steps.
Results replace one section of docs/benchmarks.md.

    .venv/bin/python tools/bench_train_data.py --config unet-finetune --data DATA --splits splits/dsb2018_stage1_train.json --cache .cache/dsb
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_infer import write_section_named  # noqa: E402

SECTION = "## Training data and step time (UNet)"


def zoom_pair(img, tgt, size):
    """The crop resize as it was: scipy's pixel-area aligned linear zoom, per array."""
    from scipy import ndimage as ndi

    win = img.shape[0]
    f = size / win
    img = ndi.zoom(img, (f, f, 1), order=1, grid_mode=True, mode="grid-constant")[:size, :size]
    tgt = ndi.zoom(tgt, (1, f, f), order=1, grid_mode=True, mode="grid-constant")[:, :size, :size]
    tgt[0] = tgt[0] > 0.5
    return img, tgt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="unet-finetune")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--splits", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--images", type=int, default=60, help="training images to draw crops from")
    ap.add_argument("--samples", type=int, default=200, help="crops for the resize timing")
    ap.add_argument("--blocks", type=int, default=3, help="alternating blocks of steps per variant")
    ap.add_argument("--steps", type=int, default=12, help="steps per block")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch
    from nseg_data.dataset import open_dataset
    from nseg_data.split import load_splits
    from nseg_train import augment
    from nseg_train.config import load_config
    from nseg_train.machine import describe
    from nseg_train.tasks import TASKS

    cfg = load_config(args.config)
    ids = list(load_splits(args.splits)["train"])[: args.images]
    samples = open_dataset(args.data, cache_dir=args.cache, ids=ids).samples
    task = TASKS["unet"](cfg)
    dataset = task.train_dataset(samples, seed=cfg.seed)
    size = cfg.data.crop_size

    # 1. The resize alone, on identical crops (a window of size/scale as random_crop cuts it).
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(args.samples):
        p = dataset.items[int(rng.integers(len(dataset.items)))]
        lo, hi = cfg.augment.scale
        win = int(round(size / float(np.exp(rng.uniform(np.log(lo), np.log(hi))))))
        win = min(win, *p.image.shape[:2])
        crops.append((np.ascontiguousarray(p.image[:win, :win]), np.ascontiguousarray(p.target[:, :win, :win])))
    torch.set_num_threads(1)  # as inside a DataLoader worker
    times = {"ndi.zoom": [], "torch interpolate": []}
    for img, tgt in crops:
        for name, fn in (("ndi.zoom", zoom_pair), ("torch interpolate", augment._resize_pair)):
            t0 = time.perf_counter()
            fn(img, tgt.copy(), size)
            times[name].append(time.perf_counter() - t0)
    resize_ms = {k: 1000 * float(np.mean(v)) for k, v in times.items()}
    t0 = time.perf_counter()
    for i in range(args.samples):
        dataset[i]
    sample_ms = 1000 * (time.perf_counter() - t0) / args.samples
    torch.set_num_threads(2)

    # 2. Whole steps, alternating the two resizes block by block.
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    device = torch.device("cpu")
    fast = augment._resize_pair
    step_s = {"ndi.zoom": [], "torch interpolate": []}
    for block in range(2 * args.blocks):
        name = "ndi.zoom" if block % 2 == 0 else "torch interpolate"
        augment._resize_pair = zoom_pair if name == "ndi.zoom" else fast
        dataset.set_epoch(block)
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.optim.batch_size, shuffle=False,
                                             num_workers=cfg.data.num_workers, drop_last=True)
        it = iter(loader)
        for _ in range(2):  # warm-up: worker start and first batches
            loss, _ = task.loss(model, next(it), device)
            opt.zero_grad()
            loss.backward()
            opt.step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss, _ = task.loss(model, next(it), device)
            opt.zero_grad()
            loss.backward()
            opt.step()
        step_s[name].append((time.perf_counter() - t0) / args.steps)
        del it, loader
    augment._resize_pair = fast
    med = {k: float(np.median(v)) for k, v in step_s.items()}
    ratio = med["ndi.zoom"] / med["torch interpolate"]

    lines = [
        f"Machine: {describe('cpu')}. `tools/bench_train_data.py --config {args.config}`: both variants "
        f"measured side by side in one process, alternating, so the ratio holds on a busy machine.",
        "",
        "| what | ndi.zoom (before) | torch interpolate (now) | ratio |",
        "|---|---:|---:|---:|",
        f"| crop resize, ms per sample (1 thread, {args.samples} crops) | {resize_ms['ndi.zoom']:.1f} | "
        f"{resize_ms['torch interpolate']:.1f} | {resize_ms['ndi.zoom'] / resize_ms['torch interpolate']:.1f}x |",
        f"| training step, s (batch {cfg.optim.batch_size}, {cfg.data.num_workers} loader workers, median of "
        f"{args.blocks} x {args.steps}) | {med['ndi.zoom']:.3f} | {med['torch interpolate']:.3f} | {ratio:.2f}x |",
        f"| steps per hour | {3600 / med['ndi.zoom']:.0f} | {3600 / med['torch interpolate']:.0f} | |",
        "",
        f"A whole augmented sample (crop, resize, flips, photometric) now takes {sample_ms:.1f} ms on one thread.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section_named(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
