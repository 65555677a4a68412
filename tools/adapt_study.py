"""Measure `nseg-train adapt` on TNBC H&E tiles: the README's claim, and the adaptation curve.

    python tools/adapt_study.py run TNBC --out docs/results/adapt --work runs/adapt-study \
        [--k 2 5 10 19] [--draws 2] [--claim tnbc_01_1,...] [--only claim|curve] [--init CHECKPOINT]
    python tools/adapt_study.py report --out docs/results/adapt

TNBC is the folder of `tnbc_SLIDE_N.png` + `.labels.tif` (Naylor et al. 2019, CC BY 4.0). Slides
are patients; the multi-source split's slides are used as it assigns them: tiles are drawn from
the training slides (01, 03, 05, 06), every model is scored on the validation slides (04, 08),
and the locked slides (02, 07) are never read. Each run copies its tiles into a folder of its own
(links), runs `nseg_train.adapt.adapt` on it exactly as the command does, and scores the model it
kept, the fine-tune itself and the default on the validation slides through the runtime's own
pipeline: the default with its shipped thresholds, and with the thresholds the run re-tuned for
it on its held-out tiles. `--init` adapts (and compares against) another UNet checkpoint instead
of the shipped default: one that never saw the TNBC slides, now that the default has. Each finished run is appended to OUT/runs.json at once (a stopped study
keeps its runs; a rerun skips them). `--only stoploss` adapts on a few DSB fluorescence images the
default already segments well and scores on DSB validation images (OUT/stoploss.json). `report`
writes OUT/tables.md (every run: DSB, F1@0.5, steps, minutes) and OUT/curve.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import time
from pathlib import Path

TRAIN_SLIDES = ("01", "03", "05", "06")
VAL_SLIDES = ("04", "08")
LOCKED_SLIDES = ("02", "07")


def tiles(folder: Path, slides: tuple[str, ...]) -> list[str]:
    names = sorted(p.name[: -len(".labels.tif")] for p in folder.glob("tnbc_*.labels.tif"))
    return [n for n in names if re.match(r"tnbc_(\d+)_", n).group(1) in slides]


def link_folder(src: Path, names: list[str], dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    src = src.resolve()  # a link's relative target would be read from its own folder
    for n in names:
        for ext in (".png", ".labels.tif"):
            if not (dst / f"{n}{ext}").exists():
                os.symlink(src / f"{n}{ext}", dst / f"{n}{ext}")
    return dst


def run_study(args) -> None:
    import numpy as np
    import torch
    from nseg_data.dataset import open_dataset
    from nseg_train.adapt import AdaptConfig, adapt, init_checkpoint
    from nseg_train.checkpoint import load_model
    from nseg_train.machine import describe
    from nseg_train.stoploss import judge

    train_pool = tiles(args.tnbc, TRAIN_SLIDES)
    val_names = tiles(args.tnbc, VAL_SLIDES)
    assert not set(train_pool + val_names) & set(tiles(args.tnbc, LOCKED_SLIDES))
    val = open_dataset(link_folder(args.tnbc, val_names, args.work / "val-slides")).samples
    device = torch.device("cpu")
    default_model, default_cfg, _ = load_model(init_checkpoint(args.init))
    never = 10**9  # judge with the given thresholds, never re-tuned on the scored slides
    args.out.mkdir(parents=True, exist_ok=True)
    runs_file = args.out / "runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else []
    done = {r["name"] for r in runs}
    baseline = judge(default_model, default_cfg, val, device, min_tune_images=never)
    print(f"default on slides {'+'.join(VAL_SLIDES)} ({len(val)} tiles): DSB {baseline.dsb:.3f} F1@0.5 {baseline.f1_50:.3f}", flush=True)

    specs = []
    if args.only in (None, "claim"):
        specs.append((args.name, args.claim.split(","), 0))
    if args.only in (None, "curve"):
        for draw in range(args.draws):
            for k in args.k:
                rng = np.random.default_rng([2024, k, draw])
                # The draw also seeds the held-out choice and the crops: k = 19 (every tile) differs by those alone.
                specs.append((f"k{k}-draw{draw}", sorted(rng.choice(train_pool, size=k, replace=False).tolist()), draw))
    for name, names, seed in specs:
        if name in done:
            continue
        assert set(names) <= set(train_pool), names
        lab = link_folder(args.tnbc, names, args.work / name / "tiles")
        t0 = time.perf_counter()
        r = adapt(lab, args.work / name / "out", AdaptConfig(**{**args.adapt, "seed": seed, "init": args.init}), progress=_progress(name))
        minutes = (time.perf_counter() - t0) / 60
        model, cfg, _ = load_model(r.model_path)
        kept = judge(model, cfg, val, device, min_tune_images=never)
        row = {"name": name, "k": len(names), "tiles": names, "kept": r.kept, "message": r.message,
               "steps": r.steps, "train_minutes": r.train_seconds / 60, "total_minutes": minutes,
               "train_cpu_minutes": r.report["train_cpu_seconds"] / 60, "torch_threads": r.report["torch_threads"],
               "kept_dsb": kept.dsb, "kept_f1_50": kept.f1_50,
               "default_dsb": baseline.dsb, "default_f1_50": baseline.f1_50,
               "heldout_adapted_dsb": r.adapted.dsb, "heldout_default_dsb": r.default.dsb,
               "machine": describe("cpu"), "config": r.report["config"]}
        ft_model, ft_cfg = r.finetuned  # the fine-tune itself, kept or not
        ft = judge(ft_model, ft_cfg, val, device, min_tune_images=never)
        row["finetune_dsb"], row["finetune_f1_50"] = ft.dsb, ft.f1_50
        if r.default.tuned:  # the default with the thresholds the run re-tuned for it on its held-out tiles
            retuned = default_cfg.replace(eval=dataclasses.replace(default_cfg.eval, **r.default.eval_params))
            d = judge(default_model, retuned, val, device, min_tune_images=never)
            row["default_retuned_dsb"], row["default_retuned_f1_50"] = d.dsb, d.f1_50
        runs.append(row)
        runs_file.write_text(json.dumps(runs, indent=1))
        print(f"{name}: kept {r.kept}, slides 04+08 DSB {kept.dsb:.3f} (default {baseline.dsb:.3f}), "
              f"F1@0.5 {kept.f1_50:.3f}; {r.train_seconds / 60:.1f} min training, {minutes:.1f} min in all", flush=True)


def run_stoploss(args) -> None:
    """A lab whose images the default already segments well (DSB fluorescence, train split, none
    of the replay set's): the fine-tune and the stop-loss's choice, both scored on DSB validation
    fluorescence images against the default."""
    import numpy as np
    import torch
    from nseg_data.dataset import open_dataset
    from nseg_data.split import load_splits
    from nseg_train.adapt import REPLAY_DIR, AdaptConfig, adapt, init_checkpoint
    from nseg_train.checkpoint import load_model
    from nseg_train.machine import describe
    from nseg_train.stoploss import judge

    sp = load_splits(args.dsb_splits)
    replay = {p.name[: -len(".labels.tif")] for p in REPLAY_DIR.glob("*.labels.tif")}
    pool = sorted(i for i in sp["train"] if sp.modality[i] == "fluorescence" and i not in replay)
    rng = np.random.default_rng(7)
    lab_ids = sorted(rng.choice(pool, size=args.stoploss_images, replace=False).tolist())
    score_ids = sorted(i for i in sp["val"] if sp.modality[i] == "fluorescence")[: args.stoploss_score]
    lab_dir = args.work / "stoploss" / "images"
    if not lab_dir.exists():
        from nseg_data.labelio import write_label_sample

        for s in open_dataset(args.dsb, ids=lab_ids).samples:
            write_label_sample(lab_dir, s)
    scored = open_dataset(args.dsb, ids=score_ids).samples
    device = torch.device("cpu")
    never = 10**9
    default_model, default_cfg, _ = load_model(init_checkpoint("default"))
    t0 = time.perf_counter()
    r = adapt(lab_dir, args.work / "stoploss" / "out", AdaptConfig(**args.adapt), progress=_progress("stoploss"))
    minutes = (time.perf_counter() - t0) / 60
    model, cfg, _ = load_model(r.model_path)
    kept = judge(model, cfg, scored, device, min_tune_images=never)
    base = judge(default_model, default_cfg, scored, device, min_tune_images=never)
    row = {"name": "stoploss-dsb-fluorescence", "lab_images": lab_ids, "kept": r.kept, "message": r.message,
           "heldout_adapted_dsb": r.adapted.dsb, "heldout_default_dsb": r.default.dsb,
           "scored_on": f"{len(scored)} DSB validation fluorescence images", "kept_dsb": kept.dsb,
           "kept_f1_50": kept.f1_50, "default_dsb": base.dsb, "default_f1_50": base.f1_50, "steps": r.steps,
           "train_minutes": r.train_seconds / 60, "total_minutes": minutes, "machine": describe("cpu"),
           "train_cpu_minutes": r.report["train_cpu_seconds"] / 60,
           "config": r.report["config"]}
    # The fine-tune itself, whichever was kept: what shipping it without the stop-loss would give.
    ft_model, ft_cfg = r.finetuned
    ft = judge(ft_model, ft_cfg, scored, device, min_tune_images=never)
    row["finetune_dsb"], row["finetune_f1_50"] = ft.dsb, ft.f1_50
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stoploss.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1), flush=True)


def _progress(name: str):
    def show(p) -> None:
        if p.phase == "train" and (p.step % 50 == 0 or p.step == p.total):
            print(f"  {name}: step {p.step}/{p.total} loss {p.loss:.3f} {p.seconds / 60:.1f} min", flush=True)
    return show


def report(args) -> None:
    """OUT/tables.md (every run of runs.json, and the stop-loss case of stoploss.json) and OUT/curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = json.loads((args.out / "runs.json").read_text())
    curve = [r for r in runs if r["name"].startswith("k")]
    lines = ["| run | tiles | kept | DSB | F1@0.5 | fine-tune DSB | default DSB | default F1@0.5 | default, re-tuned DSB "
             "| held-out DSB adapted / default | steps | training min (CPU min) | whole command min |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in runs:
        rt = f"{r['default_retuned_dsb']:.3f}" if "default_retuned_dsb" in r else "-"
        cpu = f" ({r['train_cpu_minutes']:.1f})" if "train_cpu_minutes" in r else ""
        lines.append(f"| {r['name']} | {r['k']} | {r['kept']} | {r['kept_dsb']:.3f} | {r['kept_f1_50']:.3f} | "
                     f"{r['finetune_dsb']:.3f} | {r['default_dsb']:.3f} | {r['default_f1_50']:.3f} | {rt} | "
                     f"{r['heldout_adapted_dsb']:.3f} / {r['heldout_default_dsb']:.3f} | {r['steps']} | "
                     f"{r['train_minutes']:.1f}{cpu} | {r['total_minutes']:.1f} |")
    lines += ["", "Tiles of each run: " + "; ".join(f"{r['name']}: {', '.join(r['tiles'])}" for r in runs)]
    stop = args.out / "stoploss.json"
    if stop.exists():
        r = json.loads(stop.read_text())
        lines += ["", "| stop-loss case | kept | held-out DSB adapted / default | kept model DSB | F1@0.5 | "
                  "fine-tune DSB | F1@0.5 | default DSB | F1@0.5 | steps | training min (CPU min) |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {len(r['lab_images'])} DSB fluorescence images, scored on {r['scored_on']} | {r['kept']} | "
                  f"{r['heldout_adapted_dsb']:.4f} / {r['heldout_default_dsb']:.4f} | {r['kept_dsb']:.3f} | "
                  f"{r['kept_f1_50']:.3f} | {r['finetune_dsb']:.3f} | {r['finetune_f1_50']:.3f} | {r['default_dsb']:.3f} | "
                  f"{r['default_f1_50']:.3f} | {r['steps']} | {r['train_minutes']:.1f} ({r['train_cpu_minutes']:.1f}) |",
                  "", f"Stop-loss case images (DSB ids): {', '.join(r['lab_images'])}"]
    (args.out / "tables.md").write_text("\n".join(lines) + "\n")
    if curve:
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        ks = sorted({r["k"] for r in curve})
        for i, (key, label) in enumerate((("dsb", "DSB"), ("f1_50", "F1@0.5"))):
            ax[i].scatter([r["k"] for r in curve], [r[f"kept_{key}"] for r in curve], color="C0", alpha=0.6)
            ax[i].plot(ks, [np.mean([r[f"kept_{key}"] for r in curve if r["k"] == k]) for k in ks], "o-", color="C0",
                       label="adapt (the model it kept)")
            claims = [r for r in runs if not r["name"].startswith("k")]
            if claims:  # the README's tiles, with the command's own budget (the curve's may be shorter)
                ax[i].scatter([r["k"] for r in claims], [r[f"kept_{key}"] for r in claims], color="C2", marker="*",
                              s=120, label="the README's command (slides 01+03)")
            ax[i].axhline(curve[0][f"default_{key}"], color="C3", ls="--", label="default, shipped thresholds")
            rt = [(r["k"], r[f"default_retuned_{key}"]) for r in curve if f"default_retuned_{key}" in r]
            if rt:
                ax[i].scatter(*zip(*rt, strict=True), color="C3", marker="x", label="default, thresholds re-tuned per run")
            ax[i].set_xlabel("annotated tiles (slides 01, 03, 05, 06)")
            ax[i].set_ylabel(f"{label} on slides 04+08")
            ax[i].set_xticks(sorted({*ks, *(r["k"] for r in runs)}))
        ax[0].legend(fontsize=7)
        fig.suptitle("nseg-train adapt on TNBC H&E tiles")
        fig.tight_layout()
        fig.savefig(args.out / "curve.png", dpi=110)
    print((args.out / "tables.md").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("tnbc", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--k", type=int, nargs="+", default=[2, 5, 10, 19])
    r.add_argument("--draws", type=int, default=2)
    r.add_argument("--claim", default="tnbc_01_1,tnbc_01_2,tnbc_01_3,tnbc_01_4,tnbc_01_5,"
                                      "tnbc_03_1,tnbc_03_2,tnbc_03_3,tnbc_03_4,tnbc_03_5")
    r.add_argument("--only", choices=("claim", "curve", "stoploss"), default=None)
    r.add_argument("--name", default="claim", help="the claim run's name (another name: another run of its tiles)")
    r.add_argument("--dsb", type=Path, help="DSB stage1_train (for --only stoploss)")
    r.add_argument("--dsb-splits", type=Path, help="its splits JSON (train images to adapt on, val to score)")
    r.add_argument("--stoploss-images", type=int, default=4)
    r.add_argument("--stoploss-score", type=int, default=30)
    r.add_argument("--init", default="default", help="the UNet checkpoint to adapt and compare against (default: the shipped one)")
    r.add_argument("--adapt", type=json.loads, default={}, help="AdaptConfig fields as JSON (default: the command's)")
    p = sub.add_parser("report")
    p.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "report":
        report(args)
    elif args.only == "stoploss":
        run_stoploss(args)
    else:
        run_study(args)


if __name__ == "__main__":
    main()
