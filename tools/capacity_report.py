"""The capacity study's report: validation curves against training compute, a table, Predictor speed.

Called by `tools/capacity_study.py report`. Writes OUT/README.md, OUT/capacity.json and
OUT/curves.png. Speed: each candidate's best checkpoint is exported with `nseg-export onnx` and
`Predictor.predict` (ONNX Runtime, 2 threads) is timed on the same synthetic image, the candidates
alternating round by round so the ratios hold on a busy machine.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_infer import machine, synthetic_image
from nseg_data.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("dsb", "f1_50", "f1_75", "aji", "pq", "dice")


def read_curve(run: Path, steps_per_epoch: int, quiet_step_s: float) -> list[dict]:
    """Validated epochs of a run: compute spent (quiet-machine minutes) and the metrics."""
    rows = []
    with (run / "log.csv").open() as f:
        for r in csv.DictReader(f):
            if not r.get("val_dsb"):
                continue
            epoch = int(r["epoch"]) + 1
            rows.append({"epoch": epoch, "compute_min": epoch * steps_per_epoch * quiet_step_s / 60,
                         **{m: float(r[f"val_{m}"]) for m in METRICS}})
    return rows


def predictor_speed(bundles: dict[str, Path], side: int, rounds: int = 3) -> dict[str, float]:
    from nseg_infer.engine.predictor import Predictor, RunConfig

    config = RunConfig(device="cpu", threads=2)
    predictors = {name: Predictor(str(b), config) for name, b in bundles.items()}
    image = synthetic_image(side)
    for p in predictors.values():
        p.predict(synthetic_image(512))  # session warm-up is not throughput
    seconds: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, p in predictors.items():
            t0 = time.perf_counter()
            p.predict(image)
            seconds[name].append(time.perf_counter() - t0)
    return {name: side * side / 1e6 / float(np.median(s)) for name, s in seconds.items()}


def plot(curves: dict[str, list[dict]], out: Path, budget_min: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in curves.items():
        x = [r["compute_min"] for r in rows]
        axes[0].plot(x, [r["dsb"] for r in rows], marker="o", label=name)
        axes[1].plot(x, [r["f1_50"] for r in rows], marker="o", label=name)
    for ax, what in zip(axes, ("validation DSB", "validation F1@0.5"), strict=True):
        ax.set_xlabel("training compute, quiet 2-core minutes")
        ax.set_ylabel(what)
        ax.axvline(budget_min, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Capacity study: candidates from the same start at equal training compute")
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(suffix=".png", delete=False, dir=out) as tmp:
        fig.savefig(tmp.name, dpi=110)
    Path(tmp.name).replace(out / "curves.png")
    plt.close(fig)


def report(args) -> int:
    cost = json.loads(Path(args.cost).read_text())
    spe = cost["steps_per_epoch"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {}
        for name, c in cost["candidates"].items():
            run = Path(args.runs) / name
            if not (run / "log.csv").exists():
                print(f"{name}: no run in {run}, left out", file=sys.stderr)
                continue
            curves[name] = read_curve(run, spe, c["quiet_step_s"])
            bundle = Path(tmp) / name
            subprocess.run([str(ROOT / ".venv/bin/nseg-export"), "onnx", str(run / "best.pt"), "--out", str(bundle)],
                           check=True, capture_output=True)
            bundles[name] = bundle
        speed = predictor_speed(bundles, args.speed_size)
    for name, rows_ in curves.items():
        c = cost["candidates"][name]
        best = max(rows_, key=lambda r: r["dsb"])
        last = rows_[-1]
        # How fast it was still climbing: DSB gained per quiet hour over its last two validations.
        slope = ((last["dsb"] - rows_[-2]["dsb"]) / ((last["compute_min"] - rows_[-2]["compute_min"]) / 60)
                 if len(rows_) > 1 else float("nan"))
        rows.append({"candidate": name, "params_m": c["params"] / 1e6, "gflop_per_mpx": c["gflop_per_mpx"],
                     "epochs": c["epochs"], "steps": c["steps"], "compute_min": last["compute_min"],
                     "best_dsb": best["dsb"], "best_epoch": best["epoch"], "last_dsb": last["dsb"],
                     "f1_50": best["f1_50"], "aji": best["aji"], "dsb_per_hour_at_end": slope,
                     "predictor_mpx_s": speed[name]})
    write_text_atomic(out / "capacity.json", json.dumps({"cost": cost, "curves": curves, "table": rows}, indent=2) + "\n")
    plot(curves, out, cost["budget_s"] / 60)
    lines = [
        "# Capacity study",
        "",
        f"Candidates trained from scratch (same seed, data, split, augmentations and cosine schedule "
        f"shape) for the same training compute: {cost['budget_s'] / 60:.0f} quiet-machine minutes of "
        f"training steps each, a candidate's epochs being that budget over its step time "
        f"(`cost.json`, steps timed side by side). Validation: the 161 validation images, through the "
        f"runtime's Predictor. Machine: {machine()}.",
        "",
        "![curves](curves.png)",
        "",
        "| candidate | params (M) | GFLOP/Mpx | epochs | steps | best val DSB (epoch) | last val DSB | F1@0.5 | AJI "
        "| DSB per quiet hour at the end | Predictor Mpx/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['candidate']} | {r['params_m']:.2f} | {r['gflop_per_mpx']:.1f} | {r['epochs']} | {r['steps']} "
                     f"| {r['best_dsb']:.4f} ({r['best_epoch']}) | {r['last_dsb']:.4f} | {r['f1_50']:.3f} | {r['aji']:.3f} "
                     f"| {r['dsb_per_hour_at_end']:+.3f} | {r['predictor_mpx_s']:.2f} |")
    lines += ["", f"Predictor Mpx/s: `Predictor.predict` on a {args.speed_size}² synthetic image, ONNX Runtime, "
              "2 threads, candidates alternating (median of 3 rounds)."]
    if rows:
        win = max(rows, key=lambda r: r["best_dsb"])
        lines += ["", f"Chosen on validation: **{win['candidate']}**, the best validation DSB at equal compute. "
                  "\"DSB per quiet hour at the end\" is the climb over each candidate's last two validations, "
                  "inside the tail of its cosine schedule: a lower bound on what a longer schedule would add."]
    write_text_atomic(out / "README.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
