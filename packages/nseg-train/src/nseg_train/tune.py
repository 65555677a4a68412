"""Tune the UNet's post-processing thresholds on the validation split (never on the locked one).

The model runs once per image; only the cheap instance step is repeated per parameter set. The
winning parameters are written into a copy of the checkpoint's config, so evaluation, export and
the runtime all use them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nseg_data.dataset import load_kaggle_folder
from nseg_data.metrics import dsb_score
from nseg_data.split import load_splits

from nseg_train.checkpoint import load_checkpoint, load_model, save_atomic
from nseg_train.deploy import runtime_compatible, runtime_predictor
from nseg_train.predict import instances_from_probs, predict_probs

# min_seed_area matters most for large, elongated H&E nuclei, whose distance maps break into
# several small cores that would each seed a nucleus.
DEFAULT_GRID = {
    "fg_threshold": (0.4, 0.5, 0.6),
    "seed_threshold": (0.4, 0.5, 0.6, 0.7),
    "min_seed_area": (3, 10, 30),
    "min_size": (8, 24, 48),
}


@dataclass(frozen=True)
class TuneResult:
    best: dict[str, float]
    best_dsb: float
    baseline_dsb: float
    table: list[dict]


def tune_checkpoint(
    checkpoint: Path, *, data: Path, splits: Path | None, out: Path, cache: Path | None, split: str = "val",
    grid: dict[str, tuple] | None = None, limit: int | None = None, progress=None,
) -> TuneResult:
    if split == "locked":
        raise ValueError("tuning on the locked split would leak it into the reported numbers; use val")
    model, cfg, _ = load_model(checkpoint)
    if cfg.model.kind != "unet" or cfg.eval.instances != "watershed":
        raise ValueError(f"{checkpoint}: tuning applies to UNet watershed post-processing only")
    ckpt = load_checkpoint(checkpoint)
    sp = load_splits(splits) if splits else None
    ids = list(sp[split]) if sp else list(ckpt["splits"]["splits"][split])
    if limit:
        ids = ids[:limit]
    res = load_kaggle_folder(data, cache_dir=cache, ids=ids)
    if res.errors:
        raise ValueError(f"{len(res.errors)} unreadable sample(s), first: {res.errors[0]}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    it = progress(res.samples, "predict") if progress else res.samples
    # The runtime's own normalisation, tiling and blending, as validation and `nseg-infer run` use.
    field = runtime_predictor(model, cfg, device).probabilities if runtime_compatible(cfg) is None else (
        lambda image: predict_probs(model, image, cfg, device))
    probs = [(s.labels, field(s.image)) for s in it]
    grid = grid or DEFAULT_GRID
    keys = list(grid)
    rows = []
    combos = list(itertools.product(*(grid[k] for k in keys)))
    for values in progress(combos, "grid") if progress else combos:
        params = dict(zip(keys, values, strict=True))
        c = cfg.replace(eval=dataclasses.replace(cfg.eval, **params))
        score = float(np.mean([dsb_score(gt, instances_from_probs(p, c)) for gt, p in probs]))
        rows.append({**params, "dsb": score})
    rows.sort(key=lambda r: -r["dsb"])
    baseline = float(np.mean([dsb_score(gt, instances_from_probs(p, cfg)) for gt, p in probs]))
    best = {k: rows[0][k] for k in keys}
    tuned = cfg.replace(eval=dataclasses.replace(cfg.eval, **best))
    ckpt["config"] = json.loads(json.dumps(tuned.to_dict()))
    ckpt["tuning"] = {"split": split, "n_images": len(probs), "baseline_dsb": baseline, "best_dsb": rows[0]["dsb"], "grid": {k: list(v) for k, v in grid.items()}}
    for k in ("optimizer", "scheduler", "scaler"):  # a deployable checkpoint needs weights only
        ckpt.pop(k, None)
    save_atomic(ckpt, out)
    (out.parent / f"{out.stem}.tuning.json").write_text(json.dumps({"best": best, "baseline_dsb": baseline, "table": rows}, indent=1))
    return TuneResult(best=best, best_dsb=rows[0]["dsb"], baseline_dsb=baseline, table=rows)
