#!/usr/bin/env python
"""What each set of test-time flips adds on the validation split, and what it costs in model calls.

For every flip set (the image alone; with its horizontal flip; with its 180-degree rotation; all
four flips, `--flips`), each validation image is segmented by the runtime's Python API
(`segment_with`: the bundle's normalisation, tiling, instance step and per-modality parameters)
with the Predictor's backend wrapped in `FlipAverage(flips=...)`, and scored against its ground
truth with the DSB 2018 metric. Writes overall and per-modality means (and every image's score)
as JSON.

    .venv/bin/python tools/probe_flips.py DATA --splits splits/dsb2018_stage1_train.json \
        --cache .cache/dsb --out docs/results/long-run/flips-val.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from nseg_data.dataset import open_dataset
from nseg_data.metrics import dsb_score
from nseg_data.split import load_splits
from nseg_infer.engine.backends import FlipAverage, create_backend
from nseg_infer.engine.bundle import load_bundle
from nseg_infer.engine.predictor import Predictor, RunConfig
from nseg_infer.runners.api import segment_with
from nseg_infer.sources.options import InputOptions

FLIP_SETS = {"none": ((),), "horizontal": ((), (3,)), "rot180": ((), (2, 3)), "four": FlipAverage.FLIPS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="the dataset (e.g. the stage1_train folder)")
    ap.add_argument("--splits", type=Path, required=True)
    ap.add_argument("--split", default="val", choices=("val", "train"))
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--model", help="bundle folder (default: the bundled default)")
    ap.add_argument("--out", type=Path, required=True, help="JSON report")
    a = ap.parse_args(argv)
    splits = load_splits(a.splits)
    res = open_dataset(a.data, cache_dir=a.cache, ids=list(splits[a.split]))
    if res.errors:
        raise SystemExit(f"{len(res.errors)} unreadable sample(s), first: {res.errors[0]}")
    report = {"format": "nseg-flips-probe/1", "model": a.model or "the bundled default", "split": a.split,
              "images": len(res.samples), "flip_sets": {k: [list(f) for f in v] for k, v in FLIP_SETS.items()},
              "results": {}}
    bundle = load_bundle(a.model)
    for name, flips in FLIP_SETS.items():
        predictor = Predictor(bundle, RunConfig(device="cpu"),
                              backend=FlipAverage(create_backend(bundle, "cpu"), flips=flips))
        t0 = time.perf_counter()
        per_image = {}
        for s in res.samples:
            seg = segment_with(predictor, s.image, InputOptions())
            per_image[s.id] = {"modality": str(s.modality), "dsb": dsb_score(s.labels, seg.labels)}
        by: dict[str, list[float]] = {}
        for r in per_image.values():
            by.setdefault(r["modality"], []).append(r["dsb"])
        row = {"model_calls_per_tile": len(flips), "dsb": float(np.mean([r["dsb"] for r in per_image.values()])),
               "per_modality": {m: float(np.mean(v)) for m, v in sorted(by.items())}, "per_image": per_image}
        report["results"][name] = row
        print(f"{name}: DSB {row['dsb']:.4f} {row['per_modality']} ({time.perf_counter() - t0:.0f} s)", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
