"""`nseg-train evaluate`: score a checkpoint on a split and write its report."""

from __future__ import annotations

from pathlib import Path

import torch
from nseg_data.dataset import open_dataset
from nseg_data.paths import recorded_path
from nseg_data.split import Splits, load_splits

from nseg_train.checkpoint import load_model
from nseg_train.distributed import DistInfo
from nseg_train.engine import pick_device
from nseg_train.evaluate import EvalResult, evaluate_samples, write_report
from nseg_train.tasks import TASKS
from nseg_train.viz import gallery


class EvalError(RuntimeError):
    pass


def pick_gallery(result: EvalResult, n: int) -> list[str]:
    """A spread over modalities: worst and best DSB of each, so failures are seen, not hidden."""
    by_mod: dict[str, list] = {}
    for r in result.rows:
        by_mod.setdefault(r.modality, []).append(r)
    picks: list[str] = []
    while len(picks) < n and any(by_mod.values()):
        for rows in by_mod.values():
            if rows and len(picks) < n:
                rows.sort(key=lambda r: r.scores.dsb)
                picks.append(rows.pop(0 if len(picks) % 2 == 0 else -1).id)
    return picks


def evaluate_checkpoint(checkpoint: Path, *, split: str, data: Path, splits: Path | None, out: Path, cache: Path | None, device: str, gallery_images: int) -> EvalResult:
    model, cfg, ckpt = load_model(checkpoint)
    sp: Splits = load_splits(splits) if splits else Splits(
        seed=ckpt["splits"]["seed"], locked_fraction=ckpt["splits"]["locked_fraction"], val_fraction=ckpt["splits"]["val_fraction"],
        ids={k: tuple(v) for k, v in ckpt["splits"]["splits"].items()}, modality=ckpt["splits"]["modality"],
    )
    try:
        ids = list(sp[split])
    except KeyError as exc:
        raise EvalError(str(exc)) from exc
    res = open_dataset(data, cache_dir=cache, ids=ids)
    if res.errors:
        raise EvalError(f"{len(res.errors)} sample(s) unreadable, first: {res.errors[0]}")
    dev = pick_device(device, DistInfo())
    model = model.to(dev)
    task = TASKS[cfg.model.kind](cfg)
    from tqdm import tqdm

    result, preds = evaluate_samples(model, res.samples, cfg, dev, predict=task.predict, keep_predictions=True, progress=lambda x: tqdm(x, desc=f"evaluate {split}"))
    extra = {
        "checkpoint": recorded_path(checkpoint), "split": split, "config_name": cfg.name, "epoch": ckpt.get("epoch"),
        "splits_sha256": sp.sha256(), "device": str(dev), "torch_threads": torch.get_num_threads(),
    }
    write_report(result, out, title=f"{cfg.name} on '{split}' ({len(result.rows)} images)", extra=extra)
    samples = res.by_id()
    rows = [(f"{i[:10]} {samples[i].modality}", samples[i].image, samples[i].labels, {cfg.name: preds[i]}) for i in pick_gallery(result, gallery_images)]
    gallery(rows, out / "gallery.png", title=f"{cfg.name}: image / truth / prediction")
    return result
