#!/usr/bin/env python
"""nseg and StarDist on the same images, each run as a user runs it, scored by `nseg-data score`.

StarDist must first be trained on the same split's train and val ids with its own scripts (in its
own venv; see docs/results/README.md, "StarDist, measured on the same split"). This tool then:
1. copies the split's images (default: locked) into one folder, `<id>.png`;
2. runs `nseg-infer run FOLDER --out NSEG --products labels` (one process) and StarDist's
   `segment_folder.py FOLDER STARDIST MODEL` (one process), each timed end to end;
3. scores both folders with `nseg-data score --split SPLIT` (overall and per modality) and writes
   OUT/comparison.json and OUT/comparison.md.

    .venv/bin/python tools/compare_stardist.py DATA SPLITS.json --stardist-model DIR \
        --stardist-python PEER_VENV/bin/python --peer-dir PEERS/stardist --out docs/results/stardist \
        [--cache CACHE] [--split locked] [--model BUNDLE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from nseg_data.atomic import write_text_atomic
from nseg_data.split import load_splits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from bench_run import StarDist, nseg_command, timed  # noqa: E402

BIN = Path(sys.executable).parent
METRICS = ("dsb", "f1_50", "f1_75", "aji", "pq", "dice")


def score(pred: Path, data: Path, splits: Path, split: str, cache: Path | None, out_json: Path) -> dict:
    cmd = [str(BIN / "nseg-data"), "score", str(pred), "--gt", str(data), "--split", split, "--splits", str(splits),
           "--json", str(out_json)]
    if cache:
        cmd += ["--cache", str(cache)]
    timed(cmd, f"nseg-data score {pred}")
    return json.loads(out_json.read_text())


def rows(name: str, report: dict) -> list[str]:
    out = []
    groups = {"overall": report["overall"], **report["per_modality"]}
    for group, m in groups.items():
        out.append(f"| {name} | {group} ({int(m['n_images'])}) | "
                   + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("splits", type=Path)
    ap.add_argument("--stardist-model", type=Path, required=True)
    ap.add_argument("--stardist-python", type=Path, required=True)
    ap.add_argument("--peer-dir", type=Path, required=True, help="the folder holding segment_folder.py")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--split", default="locked")
    ap.add_argument("--model", help="nseg bundle (default: the bundled default)")
    a = ap.parse_args()
    ids = sorted(load_splits(a.splits)[a.split])
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        images, nseg_out, sd_out = Path(tmp) / "images", Path(tmp) / "nseg", Path(tmp) / "stardist"
        images.mkdir()
        for i in ids:
            shutil.copyfile(a.data / i / "images" / f"{i}.png", images / f"{i}.png")
        t_nseg = timed([*nseg_command([images], nseg_out, a.model), "--products", "labels"], "nseg-infer run")
        t_sd = StarDist(str(a.stardist_python), str(a.stardist_model), a.peer_dir / "segment_folder.py").seconds(images, sd_out)
        nseg = score(nseg_out, a.data, a.splits, a.split, a.cache, a.out / "nseg.score.json")
        sd = score(sd_out, a.data, a.splits, a.split, a.cache, a.out / "stardist.score.json")
    result = {"split": a.split, "images": len(ids), "nseg_model": a.model or "default",
              "stardist_model": a.stardist_model.name, "seconds": {"nseg": t_nseg, "stardist": t_sd},
              "nseg": nseg["overall"], "stardist": sd["overall"],
              "nseg_by_modality": nseg["per_modality"], "stardist_by_modality": sd["per_modality"],
              "missing": {"nseg": nseg["missing_predictions"], "stardist": sd["missing_predictions"]}}
    write_text_atomic(a.out / "comparison.json", json.dumps(result, indent=1))
    md = [f"nseg vs StarDist on the {a.split} split ({len(ids)} images), each run as one command over a folder "
          f"(labels only), scored by `nseg-data score`.", "",
          "| tool | subset (images) | DSB | F1@0.5 | F1@0.75 | AJI | PQ | Dice |", "|---|---|---:|---:|---:|---:|---:|---:|",
          *rows("nseg", nseg), *rows("StarDist", sd), "",
          f"Whole command, start-up included: nseg {t_nseg:.1f} s, StarDist {t_sd:.1f} s."]
    write_text_atomic(a.out / "comparison.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
