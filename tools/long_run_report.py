#!/usr/bin/env python
"""Validation curves of the default UNet's long run, its anneal and the H&E expert, as one PNG.

Reads the runs' `log.csv` files (as `nseg-train unet` writes them) from docs/results/long-run and
draws validation DSB (the weight average and the raw weights) against cumulative epochs from the
default checkpoint, beside the default's own untuned validation figure; writes curves.png there.

    .venv/bin/python tools/long_run_report.py [--dir docs/results/long-run] [--default-val 0.541]
        [--measure-default-hed DATA --splits splits/dsb2018_stage1_train.json --cache .cache/dsb]

`--measure-default-hed` scores the shipped default checkpoint on the validation H&E images with
the expert's validation settings (the figure the expert starts from) instead of taking it as given.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_evals(path: Path) -> list[dict[str, float]]:
    with path.open() as f:
        return [{k: float(r[k]) for k in ("epoch", "val_dsb", "val_dsb_raw")} for r in csv.DictReader(f) if r["val_dsb"]]


def default_on_hed(data: Path, splits: Path, cache: Path | None, config: Path) -> float:
    """The shipped default checkpoint's validation DSB on the H&E images, as the expert's run validates."""
    import numpy as np
    import torch
    from nseg_train.checkpoint import load_model
    from nseg_train.config import load_config
    from nseg_train.engine import RunOptions, load_split_samples, resolve_init
    from nseg_train.evaluate import evaluate_samples
    from nseg_train.tasks import TASKS

    cfg = load_config(config)
    model, _, _ = load_model(resolve_init("default", "unet"))
    opts = RunOptions(data_dir=data, splits_file=splits, out_dir=ROOT / ".cache" / "unused", cache_dir=cache)
    _, samples = load_split_samples(opts, ("val",), {}, cfg.data.modalities)
    res, _ = evaluate_samples(model.eval(), samples["val"], cfg, torch.device("cpu"), predict=TASKS["unet"](cfg).predict)
    return float(np.mean([r.scores.dsb for r in res.rows]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=ROOT / "docs" / "results" / "long-run")
    ap.add_argument("--default-val", type=float, default=0.541,
                    help="the default checkpoint's untuned validation DSB (its training log's last evaluation)")
    ap.add_argument("--default-hed", type=float, default=0.3028,
                    help="the default checkpoint's untuned validation DSB on the H&E images alone")
    ap.add_argument("--measure-default-hed", type=Path, metavar="DATA", help="measure --default-hed on this dataset")
    ap.add_argument("--splits", type=Path)
    ap.add_argument("--cache", type=Path)
    a = ap.parse_args(argv)
    if a.measure_default_hed:
        if not a.splits:
            ap.error("--measure-default-hed needs --splits")
        a.default_hed = default_on_hed(a.measure_default_hed, a.splits, a.cache, a.dir / "unet-hed-expert.config.yaml")
        print(f"default on the validation H&E images: {a.default_hed:.4f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    long = read_evals(a.dir / "unet-long.log.csv")
    with (a.dir / "unet-long.log.csv").open() as f:
        long_epochs = len(list(csv.DictReader(f)))
    anneal = read_evals(a.dir / "unet-anneal.log.csv")
    expert = read_evals(a.dir / "unet-hed-expert.log.csv")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax.plot([r["epoch"] + 1 for r in long], [r["val_dsb"] for r in long], "o-", c="C0", label="long run: weight average")
    ax.plot([r["epoch"] + 1 for r in long], [r["val_dsb_raw"] for r in long], "o--", c="C0", alpha=0.5, label="long run: raw weights")
    x = [long_epochs + r["epoch"] + 1 for r in anneal]
    ax.plot(x, [r["val_dsb"] for r in anneal], "s-", c="C1", label="anneal (from the long run's last): weight average")
    ax.plot(x, [r["val_dsb_raw"] for r in anneal], "s--", c="C1", alpha=0.5, label="anneal: raw weights")
    ax.axhline(a.default_val, c="k", ls=":", label=f"default, untuned ({a.default_val:.3f})")
    ax.axvline(long_epochs + 0.5, c="grey", lw=0.5)
    ax.set(xlabel="epochs from the default checkpoint", ylabel="validation DSB (161 images, untuned)",
           title="Default UNet trained on: long run, then anneal")
    ax.legend(fontsize=7, loc="lower right")
    bx.plot([r["epoch"] + 1 for r in expert], [r["val_dsb"] for r in expert], "o-", c="C2", label="H&E expert: weight average")
    bx.plot([r["epoch"] + 1 for r in expert], [r["val_dsb_raw"] for r in expert], "o--", c="C2", alpha=0.5, label="H&E expert: raw")
    bx.axhline(a.default_hed, c="k", ls=":", label=f"default on these images ({a.default_hed:.3f})")
    bx.set(xlabel="epochs from the default checkpoint", ylabel="validation DSB (26 H&E images, untuned)",
           title="H&E expert (trained on H&E only)")
    bx.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = a.dir / "curves.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
