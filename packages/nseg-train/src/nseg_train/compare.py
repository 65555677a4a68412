"""`nseg-train compare`: finished runs scored on one split, side by side (the seed's Table 1 and
Figure 6, with instance metrics). Nothing is trained; every number is measured here except
training time, which comes from the checkpoints."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nseg_data.atomic import write_text_atomic
from nseg_data.dataset import open_dataset
from nseg_data.paths import recorded_path
from nseg_data.sample import Sample
from nseg_data.sources import source_of
from nseg_data.split import Splits, load_splits

from nseg_train.checkpoint import init_epochs, load_checkpoint, load_model
from nseg_train.distributed import DistInfo
from nseg_train.engine import _read_log, pick_device
from nseg_train.evaluate import EvalResult, evaluate_samples
from nseg_train.machine import describe
from nseg_train.models import count_parameters
from nseg_train.tasks import TASKS
from nseg_train.viz import gallery, plot_curves_side_by_side

METRICS = (("dsb", "DSB"), ("f1_50", "F1@0.5"), ("f1_75", "F1@0.75"), ("aji", "AJI"), ("pq", "PQ"), ("dice", "Dice"))
# Figure 6 of the seed shows fluorescence next to brightfield / H&E images.
GALLERY_ORDER = ("fluorescence", "brightfield", "histology")


class CompareError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunResult:
    name: str
    checkpoint: Path
    kind: str
    config_name: str
    params: int
    epochs: int
    init_epochs: int
    train_seconds: float | None
    trained_on: str
    result: EvalResult
    predictions: dict[str, np.ndarray]
    history: list[dict]


def splits_from_checkpoint(ckpt: dict) -> Splits:
    s = ckpt["splits"]
    return Splits(
        seed=s["seed"], locked_fraction=s["locked_fraction"], val_fraction=s["val_fraction"],
        ids={k: tuple(v) for k, v in s["splits"].items()}, modality=s["modality"],
    )


def resolve_run(path: Path) -> tuple[Path, Path]:
    """(checkpoint to evaluate, run directory): best.pt of a run directory, or a given .pt file."""
    path = Path(path)
    if path.is_file():
        return path, path.parent
    for name in ("best.pt", "last.pt"):
        if (path / name).is_file():
            return path / name, path
    raise CompareError(f"{path}: not a checkpoint and no best.pt / last.pt inside")


def run_names(resolved: list[tuple[Path, Path]]) -> list[str]:
    """A run directory's name; a checkpoint given by file (e.g. tuned.pt) adds its stem."""
    base = [d.name if c.stem in ("best", "last") else f"{d.name}/{c.stem}" for c, d in resolved]
    return [f"{d.parent.name}/{b}" if base.count(b) > 1 else b for b, (_, d) in zip(base, resolved, strict=True)]



def pick_images(samples: list[Sample], n: int) -> list[Sample]:
    """Round-robin over fluorescence, brightfield, histology (then any other), by id, so the
    figure shows each look the models must handle."""
    by_mod: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.id):
        by_mod.setdefault(str(s.modality), []).append(s)
    order = [m for m in GALLERY_ORDER if m in by_mod] + sorted(set(by_mod) - set(GALLERY_ORDER))
    picks: list[Sample] = []
    while len(picks) < n and any(by_mod[m] for m in order):
        for m in order:
            if by_mod[m] and len(picks) < n:
                picks.append(by_mod[m].pop(0))
    return picks


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def markdown(runs: list[RunResult], *, split: str, sp: Splits, machine: str, device: str) -> str:
    mods = sorted({r.modality for r in runs[0].result.rows})
    counts = ", ".join(f"{m} {sum(r.modality == m for r in runs[0].result.rows)}" for m in mods)
    lines = [
        f"## Comparison on the '{split}' split",
        "",
        f"{len(runs[0].result.rows)} images ({counts}); splits sha256 `{sp.sha256()[:12]}`. "
        f"Metrics and inference time measured on: {machine} (device {device}). "
        "Inference time: whole-image prediction including tiling, normalisation and instance "
        "post-processing, per megapixel of input. Training time is read from each run's last checkpoint "
        "(the machine it trained on is in the 'trained on' column).",
        "",
        "| run | model | params | epochs | training time | trained on | inference s/MP | "
        + " | ".join(h for _, h in METRICS) + " |",
        "|" + "---|" * (6 + 1 + len(METRICS)),
    ]
    for r in runs:
        ov = r.result.overall
        lines.append(
            f"| {r.name} | {r.kind} ({r.config_name}) | {r.params / 1e6:.1f} M | {r.epochs}{f' + {r.init_epochs} (init)' if r.init_epochs else ''} | {_hours(r.train_seconds)} | "
            f"{r.trained_on} | {r.result.seconds_per_megapixel:.2f} | " + " | ".join(f"{ov[k]:.3f}" for k, _ in METRICS) + " |"
        )
    sections = [(m, lambda r, m=m: r.result.per_modality()[m]) for m in mods]
    sources = sorted(runs[0].result.per_source())
    if len(sources) > 1:
        sections += [(f"source {src}", lambda r, src=src: r.result.per_source()[src]) for src in sources]
    for title, metrics in sections:
        lines += ["", f"### {title}", "", "| run | images | " + " | ".join(h for _, h in METRICS) + " |", "|" + "---|" * (2 + len(METRICS))]
        for r in runs:
            pm = metrics(r)
            lines.append(f"| {r.name} | {pm['n_images']} | " + " | ".join(f"{pm[k]:.3f}" for k, _ in METRICS) + " |")
    return "\n".join(lines) + "\n"


def worst_by_source(runs: list[RunResult], samples: list[Sample], n: int) -> dict[str, list[Sample]]:
    """Each source's n images the first run (the baseline) scores worst on, by DSB: where a newer
    model must show what it changed."""
    dsb = {r.id: r.scores.dsb for r in runs[0].result.rows}
    by_source: dict[str, list[Sample]] = {}
    for smp in sorted(samples, key=lambda x: (dsb[x.id], x.id)):
        picked = by_source.setdefault(source_of(smp) or "all", [])
        if len(picked) < n:
            picked.append(smp)
    return by_source


def compare_runs(
    run_paths: list[Path],
    *,
    split: str,
    data: Path,
    splits: Path | None,
    out: Path,
    cache: Path | None = None,
    device: str = "auto",
    gallery_images: int = 4,
    limit: int | None = None,
    progress: Callable | None = None,
) -> list[RunResult]:
    if not run_paths:
        raise CompareError("give at least one run directory")
    resolved = [resolve_run(p) for p in run_paths]
    names = run_names(resolved)
    first = load_checkpoint(resolved[0][0])
    sp = load_splits(splits) if splits else splits_from_checkpoint(first)
    try:
        ids = list(sp[split])
    except KeyError as exc:
        raise CompareError(str(exc)) from exc
    if limit:
        ids = ids[:limit]
    res = open_dataset(data, cache_dir=cache, ids=ids)
    if res.errors:
        raise CompareError(f"{len(res.errors)} sample(s) unreadable, first: {res.errors[0]}")
    samples = res.samples
    dev = pick_device(device, DistInfo())
    machine = describe(str(dev))

    runs: list[RunResult] = []
    for (ckpt_path, run_dir), name in zip(resolved, names, strict=True):
        model, cfg, ckpt = load_model(ckpt_path)
        trained_on = splits_from_checkpoint(ckpt)
        seen = set(trained_on["train"]) | set(trained_on["val"])
        leaked = sorted(seen & set(ids))
        if leaked:
            raise CompareError(
                f"{ckpt_path}: {len(leaked)} of the '{split}' images were in this run's train/val split "
                f"(e.g. {leaked[0]}); a comparison needs images no run has seen"
            )
        model = model.to(dev)
        task = TASKS[cfg.model.kind](cfg)
        # One untimed prediction first: lazy initialisation (threads, allocator, cuDNN) is not per-image cost.
        task.predict(model, samples[0], cfg, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        wrap = (lambda x, n=name: progress(x, f"{n} on {split}")) if progress else None
        result, preds = evaluate_samples(model, samples, cfg, dev, predict=task.predict, keep_predictions=True, progress=wrap)
        last = run_dir / "last.pt"
        final = load_checkpoint(last) if last.is_file() and last != ckpt_path else ckpt
        runs.append(RunResult(
            name=name, checkpoint=ckpt_path, kind=cfg.model.kind, config_name=cfg.name, params=count_parameters(model),
            epochs=int(final.get("epoch", -1)) + 1, init_epochs=init_epochs(final), train_seconds=final.get("train_seconds"),
            trained_on=str(final.get("machine", "not recorded")), result=result, predictions=preds,
            history=_read_log(run_dir / "log.csv"),
        ))
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "comparison.md", markdown(runs, split=split, sp=sp, machine=machine, device=str(dev)))
    payload = {
        "split": split, "splits_sha256": sp.sha256(), "machine": machine, "device": str(dev),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": [
            {
                "name": r.name, "checkpoint": recorded_path(r.checkpoint), "kind": r.kind, "config": r.config_name, "params": r.params,
                "epochs": r.epochs, "init_epochs": r.init_epochs, "train_seconds": r.train_seconds, "trained_on": r.trained_on,
                "seconds_per_megapixel": r.result.seconds_per_megapixel, "overall": r.result.overall,
                "per_modality": r.result.per_modality(),
                **({"per_source": r.result.per_source()} if len(r.result.per_source()) > 1 else {}),
            }
            for r in runs
        ],
    }
    write_text_atomic(out / "comparison.json", json.dumps(payload, indent=1))
    rows = [
        (f"{s.id[:10]} {s.modality}", s.image, s.labels, {r.name: r.predictions[s.id] for r in runs})
        for s in pick_images(samples, gallery_images)
    ]
    gallery(rows, out / "comparison.png", title=f"image / truth / {' / '.join(r.name for r in runs)} ('{split}' split)")
    if len(runs[0].result.per_source()) > 1:
        base_dsb = {x.id: x.scores.dsb for x in runs[0].result.rows}
        for src, worst in worst_by_source(runs, samples, max(1, gallery_images // 2)).items():
            rows = [(f"{w.id[:16]} DSB {base_dsb[w.id]:.2f}", w.image, w.labels,
                     {r.name: r.predictions[w.id] for r in runs}) for w in worst]
            gallery(rows, out / f"worst-{src}.png", title=f"{src}: the first run's worst '{split}' images, every run")
    plot_curves_side_by_side([(r.name, r.history) for r in runs], out / "curves.png", title="training curves")
    return runs
