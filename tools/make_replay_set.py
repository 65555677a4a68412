"""Build the replay set shipped with nseg-train (`nseg_train/assets/replay/`).

    python tools/make_replay_set.py DATA --splits splits/dsb2018_stage1_train.json --out packages/nseg-train/src/nseg_train/assets/replay

DATA is the DSB 2018 stage1_train folder (CC0). `nseg-train adapt` mixes these images into a
lab's fine-tune so the default model keeps what it knew. Only images of the split's `train` part
are taken (never `val` or `locked`), a fixed draw per modality, each cut to at most 256 x 256
pixels around its centre so the set stays small (a few hundred kB); the folder's README.md
lists each image's id and window.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from nseg_data.dataset import open_dataset
from nseg_data.labelio import write_label_sample
from nseg_data.sample import Sample
from nseg_data.split import load_splits
from skimage.segmentation import relabel_sequential

# Images per modality: the default's training mix, fluorescence first, with H&E and brightfield
# kept so an adapted model still sees every look it was made for.
PER_MODALITY = {"fluorescence": 8, "histology": 4, "brightfield": 2}
SIDE = 256
SEED = 2018


def centre_crop(s: Sample, side: int) -> tuple[Sample, tuple[int, int, int, int]]:
    h, w = s.labels.shape
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    win = (y, x, min(h, y + side), min(w, x + side))
    lab = relabel_sequential(s.labels[win[0]:win[2], win[1]:win[3]])[0].astype(np.uint32)
    return Sample(s.id, np.ascontiguousarray(s.image[win[0]:win[2], win[1]:win[3]]), lab, s.modality, s.source), win


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--splits", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sp = load_splits(args.splits)
    rng = np.random.default_rng(SEED)
    ids = []
    for modality, n in PER_MODALITY.items():
        pool = sorted(i for i in sp["train"] if sp.modality[i] == modality)
        ids += [pool[int(k)] for k in sorted(rng.choice(len(pool), size=n, replace=False))]
    res = open_dataset(args.data, ids=ids)
    if res.errors:
        raise SystemExit(f"unreadable: {res.errors[0]}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in sorted(res.samples, key=lambda s: (str(s.modality), s.id)):
        crop, win = centre_crop(s, SIDE)
        write_label_sample(args.out, crop)
        rows.append(f"| `{s.id}` | {s.modality} | {win[0]}:{win[2]}, {win[1]}:{win[3]} | {int(crop.labels.max())} |")
    (args.out / "README.md").write_text(
        "# Replay set of `nseg-train adapt`\n\n"
        f"{len(rows)} images of the 2018 Data Science Bowl stage 1 training data (BBBC038, CC0 1.0), all from "
        "the `train` part of `splits/dsb2018_stage1_train.json` (never its validation or locked images), "
        f"cut to at most {SIDE} x {SIDE} pixels around the centre (nuclei crossing the edge kept as cut), "
        "labels renumbered 1..n. Made by `tools/make_replay_set.py`; a fine-tune mixes them into a lab's "
        "images so the model keeps what it knew.\n\n"
        "| DSB id | modality | rows, columns | nuclei |\n|---|---|---|---:|\n" + "\n".join(rows) + "\n")
    print(f"wrote {len(rows)} images to {args.out}")


if __name__ == "__main__":
    main()
