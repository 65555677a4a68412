#!/usr/bin/env python
"""The scale a model was trained at: median equivalent diameter (px) of the training nuclei.

The runtime rescales a user's image by `--diameter` against this number, so it must describe
the images the weights saw: only the ids of the chosen split (default `train`) are measured, from
any data set nseg-data reads (a stage1_train folder, a label folder, a sources catalogue). Each
label is one nucleus; its equivalent diameter is sqrt(4 * area / pi).

    .venv/bin/python tools/bundle_scale.py --data DSB/stage1_train --splits splits/dsb2018_stage1_train.json
    .venv/bin/python tools/bundle_scale.py --data splits/sources.yaml --splits splits/multi_source.json
    .venv/bin/python tools/bundle_scale.py ... --write packages/nseg-infer/src/nseg_infer/assets/default
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from nseg_data.atomic import write_bytes_atomic
from nseg_data.dataset import open_dataset
from nseg_data.size import equivalent_diameters
from nseg_data.split import load_splits


def diameters(data: Path, ids: list[str], cache: Path | None = None) -> list[float]:
    res = open_dataset(data, cache_dir=cache, ids=ids)
    if res.errors:
        raise SystemExit(f"{len(res.errors)} unreadable sample(s), first: {res.errors[0]}")
    out: list[float] = []
    for sample in res.samples:
        out.extend(equivalent_diameters(sample.labels).tolist())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="any data set nseg-data reads")
    ap.add_argument("--cache", type=Path, help="decoded-sample cache directory")
    ap.add_argument("--splits", type=Path, required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--write", type=Path, help="bundle folder whose metadata.json gets the 'scale' entry")
    args = ap.parse_args(argv)
    ids = list(load_splits(args.splits)[args.split])
    d = diameters(args.data, ids, args.cache)
    scale = {"nucleus_diameter_px": round(float(np.median(d)), 2),
             "source": f"median equivalent diameter of {len(d)} nuclei in the {len(ids)} "
                       f"'{args.split}' images of {args.splits.name}"}
    print(json.dumps(scale, indent=1))
    if args.write:
        meta_file = args.write / "metadata.json"
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if (meta.get("scale") or {}).get("estimate"):
            raise SystemExit(f"{meta_file}: the model was trained at one nucleus size, which its 'scale' "
                             "records already; its training images' own sizes do not describe it")
        meta["scale"] = scale
        write_bytes_atomic(meta_file, (json.dumps(meta, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
