#!/usr/bin/env python
"""Do today's outputs equal an earlier commit's? `nseg-infer run` on the same real images with the
code of `--base` and with the working tree, then every product compared.

    .venv/bin/python tools/check_outputs.py --base COMMIT --data path/to/stage1_train

The inputs: two training-split images of each modality (from `--splits`), and a mosaic of
fluorescence images larger than one instance block (4,600 x 3,100 px, an OME-TIFF with a 0.325 µm
pixel size), so the block path, the µm columns and every product are exercised. CSV and GeoJSON
must be equal byte for byte; labels TIFFs and overlays pixel for pixel; ROI zips entry by entry
(zip timestamps aside). `summary.csv` is compared without its timing columns. Exit status 1 on any
difference, with the differences listed.

The base commit's code runs from a git worktree (`OUT/base-COMMIT`, kept for reruns) in the same
virtual environment, so both runs see the same libraries.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRODUCTS = "labels,csv,overlay,geojson,rois"
TIMING = {"seconds", "backend"}


def pick_images(data: Path, splits: Path, per_modality: int) -> list[Path]:
    s = json.loads(splits.read_text())
    train = sorted(s["splits"]["train"])
    chosen: list[Path] = []
    for modality in ("fluorescence", "histology", "brightfield"):
        ids = [i for i in train if s["modality"][i] == modality][:per_modality]
        chosen += [data / i / "images" / f"{i}.png" for i in ids]
    return chosen


def make_inputs(data: Path, splits: Path, folder: Path, per_modality: int) -> None:
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    s = json.loads(splits.read_text())
    for p in pick_images(data, splits, per_modality):
        (folder / p.name).write_bytes(p.read_bytes())
    mosaic = folder / "mosaic.ome.tif"
    if mosaic.exists():
        return
    fluo = [i for i in sorted(s["splits"]["train"]) if s["modality"][i] == "fluorescence"]
    h, w = 3100, 4600
    canvas = np.zeros((h, w), np.uint8)
    y = x = row_h = 0
    for i in fluo:
        im = np.asarray(Image.open(data / i / "images" / f"{i}.png").convert("L"))
        ih, iw = im.shape
        if x + iw > w:
            y, x, row_h = y + row_h, 0, 0
        if y + ih > h:
            break
        canvas[y:y + ih, x:x + iw] = im
        x, row_h = x + iw, max(row_h, ih)
    tifffile.imwrite(mosaic, canvas, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.325,
                                                          "PhysicalSizeY": 0.325})


def cli_module(src: Path) -> str:
    infer = src / "packages" / "nseg-infer" / "src" / "nseg_infer"
    return "nseg_infer.cli" if (infer / "cli.py").exists() else "nseg_infer.runners.cli"


def run_nseg(src: Path, inputs: Path, out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in sorted((src / "packages").glob("*/src"))))
    # `--device cpu`: plain ONNX Runtime fp32, the one backend every version has, so a faster
    # backend chosen by `auto` never makes a difference the code did not.
    cmd = [sys.executable, "-m", cli_module(src), "run", str(inputs), "--out", str(out), "--products", PRODUCTS,
           "--device", "cpu"]
    print(f"running {src.name}: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, env=env, check=True, cwd=src)


def worktree(base: str, out: Path) -> Path:
    commit = subprocess.run(["git", "rev-parse", base], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    tree = out / f"base-{commit[:10]}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return tree


def _rows(p: Path) -> list[dict[str, str]]:
    with p.open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING and k not in ("labels", "outputs", "output")}
                for r in csv.DictReader(f)]


def same(a: Path, b: Path) -> str | None:
    """None when the two products are equal by their kind's rule, else what differs."""
    name = a.name
    if name == "summary.csv":
        return None if _rows(a) == _rows(b) else "summary rows differ"
    if name.endswith((".labels.tif", ".tif")):
        import tifffile

        x, y = tifffile.imread(a), tifffile.imread(b)
        if x.shape != y.shape:
            return f"labels shape {x.shape} vs {y.shape}"
        n = int((x != y).sum())
        return None if n == 0 else f"{n} label pixels differ"
    if name.endswith(".png"):
        from PIL import Image

        x, y = np.asarray(Image.open(a)), np.asarray(Image.open(b))
        if x.shape != y.shape:
            return f"image shape {x.shape} vs {y.shape}"
        n = int((x != y).any(axis=-1).sum()) if x.ndim == 3 else int((x != y).sum())
        return None if n == 0 else f"{n} overlay pixels differ"
    if name.endswith(".zip"):
        with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
            ea = {i.filename: za.read(i) for i in za.infolist()}
            eb = {i.filename: zb.read(i) for i in zb.infolist()}
        if list(ea) != list(eb):
            return f"ROI names differ ({len(ea)} vs {len(eb)})"
        bad = [k for k in ea if ea[k] != eb[k]]
        return None if not bad else f"{len(bad)} ROIs differ, first {bad[0]}"
    return None if a.read_bytes() == b.read_bytes() else f"bytes differ ({a.stat().st_size} vs {b.stat().st_size})"


def compare(base_out: Path, head_out: Path) -> list[str]:
    problems = []
    base_files = sorted(p.relative_to(base_out) for p in base_out.rglob("*") if p.is_file())
    head_files = sorted(p.relative_to(head_out) for p in head_out.rglob("*") if p.is_file())
    for rel in sorted(set(base_files) ^ set(head_files)):
        problems.append(f"{rel}: only in {'base' if rel in base_files else 'head'}")
    for rel in sorted(set(base_files) & set(head_files)):
        d = same(base_out / rel, head_out / rel)
        if d:
            problems.append(f"{rel}: {d}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="commit (or ref) whose outputs are the reference")
    ap.add_argument("--data", type=Path, required=True, help="DSB 2018 stage1_train folder")
    ap.add_argument("--splits", type=Path, default=ROOT / "splits" / "dsb2018_stage1_train.json")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "check_outputs")
    ap.add_argument("--per-modality", type=int, default=2)
    a = ap.parse_args(argv)
    out = a.out.resolve()
    inputs = out / "inputs"
    make_inputs(a.data, a.splits, inputs, a.per_modality)
    base = worktree(a.base, out)
    base_out = out / f"out-{base.name}"
    if not (base_out / "summary.csv").exists():  # the reference is made once per commit
        run_nseg(base, inputs, base_out)
    head_out = out / "out-head"
    if head_out.exists():
        import shutil

        shutil.rmtree(head_out)
    run_nseg(ROOT, inputs, head_out)
    problems = compare(base_out, head_out)
    n = sum(1 for p in base_out.rglob("*") if p.is_file())
    if problems:
        print(f"{len(problems)} of {n} files differ from {a.base}:")
        print("\n".join(f"  {p}" for p in problems))
        return 1
    print(f"all {n} files equal {a.base}'s ({len(list(inputs.iterdir()))} inputs, products {PRODUCTS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
