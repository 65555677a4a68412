#!/usr/bin/env python
"""Capacity study at equal CPU time: candidate UNets trained from the same start for the same compute.

    # 1. cost: each candidate's training step, measured side by side (alternating blocks of steps
    #    in one process, so ratios hold on a busy machine), plus parameters and FLOPs per pixel;
    #    and the epochs each candidate gets from one budget of quiet-machine seconds.
    .venv/bin/python tools/capacity_study.py cost docs/results/capacity/configs/*.yaml --budget-s 1500 \
        --out docs/results/capacity/cost.json
    # 2. train each with `nseg-train unet --config CFG --epochs E ...` (tools/capacity_train.sh)
    # 3. report: validation curves against training compute in one plot and table, and each
    #    candidate's Predictor Mpx/s (ONNX Runtime, measured side by side)
    .venv/bin/python tools/capacity_study.py report --cost docs/results/capacity/cost.json --runs runs/capacity \
        --out docs/results/capacity

Equal compute is counted in quiet-machine seconds of training steps: a candidate's epochs are the
budget divided by its step time, so a candidate trained while the machine was busy is not cheated
of steps. Validation passes are measurement and are not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))


def _name(path: Path) -> str:
    return Path(path).stem


def cost(args) -> int:
    import numpy as np
    import torch
    from nseg_train.config import load_config
    from nseg_train.models import count_parameters
    from nseg_train.tasks import TASKS
    from torch.utils.flop_counter import FlopCounterMode

    paths = {_name(p): str(p) for p in args.configs}
    cfgs = {name: load_config(p) for name, p in paths.items()}
    first = next(iter(cfgs.values()))
    bs, size = first.optim.batch_size, first.data.crop_size
    steps_per_epoch = -(-args.train_images * first.data.crops_per_image // bs)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(bs, 3, size, size, generator=gen)
    y = (torch.rand(bs, 2, size, size, generator=gen) > 0.5).float()
    runs = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(cfg.seed)
        task = TASKS["unet"](cfg)
        model = task.build_model().train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.eval()(x[:1])
        model.train()
        runs[name] = {"task": task, "model": model, "opt": opt, "params": count_parameters(model),
                      "gflop_per_mpx": counter.get_total_flops() / 1e9 / (size * size / 1e6), "times": []}

    def step(r):
        loss, _ = r["task"].loss(r["model"], (x, y), torch.device("cpu"))
        r["opt"].zero_grad()
        loss.backward()
        r["opt"].step()

    for r in runs.values():  # warm-up
        step(r)
    for _ in range(args.rounds):
        for r in runs.values():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(r)
            r["times"].append((time.perf_counter() - t0) / args.steps)
    base = next(iter(runs))
    out = {"budget_s": args.budget_s, "steps_per_epoch": steps_per_epoch, "data_s_per_step": args.data_s,
           "baseline": base, "candidates": {}}
    base_net = float(np.median(runs[base]["times"]))
    for name, r in runs.items():
        net = float(np.median(r["times"]))
        # On a busy machine a measured ratio can come out below what the arithmetic allows (a
        # network with extra heads timed faster than without them), so a candidate is charged at
        # least its share of the baseline's FLOPs.
        ratio = max(net / base_net, r["gflop_per_mpx"] / runs[base]["gflop_per_mpx"])
        # The baseline's quiet step time anchors the scale; the others follow by the ratio.
        quiet = (args.baseline_step_s or base_net + args.data_s) * ratio
        epochs = max(1, round(args.budget_s / quiet / steps_per_epoch))
        out["candidates"][name] = {
            "config": paths[name],
            "params": r["params"], "gflop_per_mpx": round(r["gflop_per_mpx"], 2),
            "net_step_s_measured": round(net, 4), "measured_ratio": round(net / base_net, 3), "charged_ratio": round(ratio, 3),
            "quiet_step_s": round(quiet, 4), "epochs": epochs, "steps": epochs * steps_per_epoch,
        }
        print(f"{name}: {r['params'] / 1e6:.2f} M params, {r['gflop_per_mpx']:.1f} GFLOP/Mpx forward, "
              f"step x{net / base_net:.2f} of {base} measured, x{ratio:.2f} charged -> {quiet:.3f} s quiet -> {epochs} epochs", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cost", help="step cost of each candidate and its epochs for one budget")
    c.add_argument("configs", nargs="+", type=Path, help="candidate configs; the first is the baseline")
    c.add_argument("--budget-s", type=float, required=True, help="quiet-machine seconds of training steps per candidate")
    c.add_argument("--baseline-step-s", type=float, default=None,
                   help="the baseline's whole training step on a quiet machine (data + network), if measured")
    c.add_argument("--data-s", type=float, default=0.06, help="data loading per step not hidden by the workers")
    c.add_argument("--train-images", type=int, default=375)
    c.add_argument("--rounds", type=int, default=4)
    c.add_argument("--steps", type=int, default=4)
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report", help="curves, table and Predictor speed of the trained candidates")
    r.add_argument("--cost", type=Path, required=True)
    r.add_argument("--runs", type=Path, required=True, help="folder with one run directory per candidate")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--speed-size", type=int, default=2048)
    args = ap.parse_args()
    if args.cmd == "cost":
        return cost(args)
    from capacity_report import report

    return report(args)


if __name__ == "__main__":
    raise SystemExit(main())
