#!/usr/bin/env python
"""Would rescaling each image to the model's training scale help? Measured on the val split.

Cellpose estimates each image's nucleus size and rescales it to its training size. This probe does
the same with nseg's own model: a first pass at the image's scale gives the median equivalent
diameter d of the nuclei found; if D / d (D: the bundle's `scale.nucleus_diameter_px`) lies outside
[1 / band, band], the image is segmented again as `--diameter d` segments it
(`files.segment_source`: resampled by D / d, labels brought back at the image's size). Both results are scored
against the ground truth, per modality, for bands 1.25 and 1.5. Val only: the locked split is
never used for a choice.

    .venv/bin/python tools/probe_scale.py DATA SPLITS.json --cache CACHE --out RESULT.json [--bundle DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from nseg_data.atomic import write_text_atomic
from nseg_data.dataset import open_dataset
from nseg_data.metrics import dsb_score
from nseg_data.size import median_diameter
from nseg_data.split import load_splits
from nseg_infer.engine.predictor import Predictor
from nseg_infer.regions import ArraySource
from nseg_infer.runners.files import segment_source
from nseg_infer.sources.options import InputOptions

BANDS = (1.25, 1.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("splits", type=Path)
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--bundle", type=Path, help="default: the bundled default model")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    res = open_dataset(a.data, cache_dir=a.cache, ids=list(load_splits(a.splits)["val"]))
    pr = Predictor(a.bundle)
    target = pr.bundle.scale.nucleus_diameter_px
    if target is None:
        raise SystemExit(f"{pr.bundle.path}: the bundle records no training scale")
    rows = []
    for k, s in enumerate(res.samples, 1):
        native = pr.predict(s.image).labels
        d = median_diameter(native) or target
        f = target / d
        row = {"id": s.id, "modality": str(s.modality), "diameter": d, "native": dsb_score(s.labels, native)}
        rescaled = None
        for band in BANDS:
            if 1 / band <= f <= band:
                row[f"band {band}"] = row["native"]
                continue
            if rescaled is None:
                with segment_source(pr, ArraySource(s.image), InputOptions(diameter=d)) as seg:
                    rescaled = np.array(seg.labels)
            row[f"band {band}"] = dsb_score(s.labels, rescaled)
        rows.append(row)
        print(f"[{k}/{len(res.samples)}] {s.id[:12]} {row['modality']} d={d:.1f} native {row['native']:.3f}", flush=True)
    keys = ["native", *(f"band {b}" for b in BANDS)]
    summary = {m: {"images": len(rr), **{k: float(np.mean([r[k] for r in rr])) for k in keys}}
               for m in sorted({r["modality"] for r in rows}) for rr in [[r for r in rows if r["modality"] == m]]}
    summary["overall"] = {"images": len(rows), **{k: float(np.mean([r[k] for r in rows])) for k in keys}}
    write_text_atomic(a.out, json.dumps({"bundle": str(pr.bundle.path.name), "target_diameter_px": target,
                                         "summary": summary, "images": rows}, indent=1))
    for m, v in summary.items():
        print(m, {k: round(x, 4) if isinstance(x, float) else x for k, x in v.items()})


if __name__ == "__main__":
    main()
