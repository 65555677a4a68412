#!/usr/bin/env python
"""Training step time of a preset: seconds per optimizer step and FLOPs per step by model part.

Builds the preset's real training data (the first N training images of a split), runs warm-up
steps, then times `--steps` steps of forward + backward + optimizer exactly as `nseg-train` does,
and counts FLOPs of one step with torch's FlopCounterMode, split by the Mask R-CNN's parts
(backbone body, FPN, RPN, box head, mask head). Results replace one section of docs/benchmarks.md.

    .venv/bin/python tools/bench_train_step.py --config maskrcnn --data DATA --splits splits/dsb2018_stage1_train.json
    .venv/bin/python tools/bench_train_step.py --config maskrcnn-paper --steps 5 ... --no-write
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_infer import write_section_named  # noqa: E402

SECTION = "## Training step time"

_PARTS = {
    "backbone": ("backbone.body",),
    "FPN": ("backbone.fpn",),
    "RPN": ("rpn",),
    "box head": ("roi_heads.box_roi_pool", "roi_heads.box_head", "roi_heads.box_predictor"),
    "mask head": ("roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor"),
}


def flops_by_part(task, model, batch, device) -> dict[str, float]:
    """GFLOPs of one forward + backward, by Mask R-CNN part (FlopCounterMode's per-module totals)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=None)
    with counter:
        loss, _ = task.loss(model, batch, device)
        loss.backward()
    model.zero_grad(set_to_none=True)
    counts = {k: sum(v.values()) / 1e9 for k, v in counter.get_flop_counts().items()}
    root = type(model).__name__
    out = {part: sum(counts.get(f"{root}.{m}", 0.0) for m in mods) for part, mods in _PARTS.items()}
    out["total"] = counts.get("Global", 0.0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--splits", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--images", type=int, default=60, help="training images to draw crops from")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch
    from nseg_data.dataset import load_kaggle_folder
    from nseg_data.split import load_splits
    from nseg_train.config import load_config
    from nseg_train.machine import describe
    from nseg_train.tasks import TASKS

    cfg = load_config(args.config)
    ids = list(load_splits(args.splits)["train"])[: args.images]
    samples = load_kaggle_folder(args.data, cache_dir=args.cache, ids=ids).samples
    task = TASKS[cfg.model.kind](cfg)
    dataset = task.train_dataset(samples, seed=cfg.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.optim.batch_size, shuffle=False,
                                         num_workers=0, collate_fn=task.collate)
    device = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    batches = iter(loader)
    n_params = sum(p.numel() for p in model.parameters())

    times = []
    for i in range(args.warmup + args.steps):
        batch = next(batches)
        t0 = time.perf_counter()
        loss, _ = task.loss(model, batch, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        print(f"step {i + 1}: {time.perf_counter() - t0:.2f} s (loss {float(loss):.3f})", flush=True)
    flops = flops_by_part(task, model, next(batches), device) if cfg.model.kind == "maskrcnn" else {}
    mean, med = float(np.mean(times)), float(np.median(times))
    crop = cfg.data.crop_size
    print(f"{cfg.name}: {med:.2f} s/step median, {mean:.2f} mean over {len(times)} steps; {n_params / 1e6:.1f} M params")
    if flops:
        print("GFLOP per step: " + ", ".join(f"{k} {v:.0f}" for k, v in flops.items()))
    if args.no_write:
        return 0
    parts = ""
    if flops:
        share = ", ".join(f"{k} {100 * v / flops['total']:.0f} %" for k, v in flops.items() if k != "total")
        parts = f" {flops['total']:.0f} GFLOP per step (forward + backward): {share}."
    row = (f"- `{cfg.name}` ({n_params / 1e6:.1f} M parameters, batch {cfg.optim.batch_size} x {crop} px crops): "
           f"**{med:.2f} s per step** (median of {len(times)} after {args.warmup} warm-up; mean {mean:.2f}).{parts}")
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.exists() else ""
    old = []
    if SECTION in text:
        body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
        old = [ln for ln in body.strip().splitlines() if ln.startswith("- `") and not ln.startswith(f"- `{cfg.name}`")]
    head = (f"`tools/bench_train_step.py --config NAME`: forward + backward + AdamW step on real training crops, "
            f"one process, data prepared before timing. Machine: {describe('cpu')}.")
    write_section_named(SECTION, head + "\n\n" + "\n".join(sorted([*old, row])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
