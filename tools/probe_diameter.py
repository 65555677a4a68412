#!/usr/bin/env python
"""Can an image's nucleus size be told from its pixels alone, before any model runs?

A model trained on nuclei brought to one scale needs, at inference, each image's nucleus diameter
estimated the same way as in training. This probe measures a classical estimator against the truth:
scale-space blob detection (Laplacian of Gaussian, skimage's `blob_log`) on the nuclear contrast
(the grey image for fluorescence, its inverse for brightfield and H&E, smoothed for H&E), the
diameter being 2 sqrt(2) x the detected blobs' median sigma. The truth is the median equivalent
diameter of the labelled nuclei. Per source and modality: how far the estimate strays (the standard
deviation of log(estimate / truth); 0.18 is about +-20 %), its bias, and the correlation.

    .venv/bin/python tools/probe_diameter.py splits/sources.yaml splits/multi_source.json --cache .cache/dsb \
        --out docs/results/multi-source/diameter-probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from nseg_data.atomic import write_text_atomic
from nseg_data.dataset import open_dataset
from nseg_data.size import median_diameter
from nseg_data.sources import source_of
from nseg_data.split import load_splits
from scipy import ndimage as ndi
from skimage.feature import blob_log

MAX_SIDE = 384  # blob search on a copy at most this large: the estimate is for a resampling factor


def nuclear_contrast(image: np.ndarray, modality: str) -> np.ndarray:
    grey = image.astype(np.float32).mean(axis=2)
    if modality != "fluorescence":
        grey = -grey  # nuclei are dark on a light background
    if modality == "histology":
        grey = ndi.gaussian_filter(grey, 1.5)  # stain texture would otherwise read as tiny blobs
    lo, hi = np.percentile(grey, (1, 99.8))
    return np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1)


def estimate_diameter(image: np.ndarray, modality: str) -> float:
    c = nuclear_contrast(image, modality)
    step = 1
    while max(c.shape) / step > MAX_SIDE:
        step *= 2
    blobs = blob_log(c[::step, ::step], min_sigma=1.0, max_sigma=16, num_sigma=16, threshold=0.1, overlap=0.5)
    return 2 * np.sqrt(2) * float(np.median(blobs[:, 2])) * step if len(blobs) else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a dataset or sources catalogue")
    ap.add_argument("splits", type=Path)
    ap.add_argument("--split", default="train", help="never 'locked'")
    ap.add_argument("--every", type=int, default=3, help="every Nth image of the split")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.split == "locked":
        raise SystemExit("error: the locked split is never used for a choice")
    ids = list(load_splits(args.splits)[args.split])[:: args.every]
    res = open_dataset(args.data, cache_dir=args.cache, ids=ids)
    for err in res.errors:
        print(f"error: {err}", file=sys.stderr)
    rows = []
    for s in res.samples:
        rows.append({"id": s.id, "source": source_of(s), "modality": str(s.modality),
                     "true": median_diameter(s.labels), "estimate": estimate_diameter(s.image, str(s.modality))})
    groups: dict[str, dict] = {}
    for key in sorted({(r["source"], r["modality"]) for r in rows}):
        sel = [r for r in rows if (r["source"], r["modality"]) == key and np.isfinite(r["estimate"])]
        if not sel:
            continue
        t = np.log([r["true"] for r in sel])
        e = np.log([r["estimate"] for r in sel])
        groups[":".join(k for k in key if k)] = {
            "images": len(sel), "true_median_px": float(np.exp(np.median(t))), "estimate_median_px": float(np.exp(np.median(e))),
            "log_ratio_std": float(np.std(e - t)), "log_ratio_mean": float(np.mean(e - t)),
            "corr": float(np.corrcoef(t, e)[0, 1]) if len(sel) > 2 and np.std(t) > 0 and np.std(e) > 0 else float("nan"),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"split": args.split, "every": args.every, "groups": groups, "images": rows}, indent=1))
    print(f"{'group':<28}{'images':>7}{'true px':>9}{'est px':>8}{'log std':>9}{'bias':>7}{'corr':>7}")
    for name, g in groups.items():
        print(f"{name:<28}{g['images']:>7}{g['true_median_px']:>9.1f}{g['estimate_median_px']:>8.1f}"
              f"{g['log_ratio_std']:>9.3f}{g['log_ratio_mean']:>7.2f}{g['corr']:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
