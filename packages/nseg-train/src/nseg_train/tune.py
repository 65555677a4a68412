"""Tune post-processing thresholds on the validation split (never on the locked one).

The model runs once per image through the runtime's Predictor (UNet: the blended field; Mask
R-CNN: the raw tile detections); only the cheap instance step is repeated per parameter set. The
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
from nseg_data.atomic import write_text_atomic
from nseg_data.dataset import open_dataset
from nseg_data.metrics import dsb_score
from nseg_data.split import load_splits

from nseg_train.checkpoint import load_checkpoint, load_model, save_atomic
from nseg_train.deploy import runtime_predictor

# min_seed_area matters most for large, elongated H&E nuclei, whose distance maps break into
# several small cores that would each seed a nucleus.
DEFAULT_GRID = {
    "fg_threshold": (0.4, 0.5, 0.6),
    "seed_threshold": (0.4, 0.5, 0.6, 0.7),
    "min_seed_area": (3, 10, 30),
    "min_size": (8, 24, 48),
}


# Detector thresholds, in the runtime merger's names. The model is run once with the loosest
# score and NMS thresholds of the grid, so every stricter setting is a filter of its output.
MASKRCNN_GRID = {
    "score_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "mask_threshold": (0.4, 0.5, 0.6),
    "nms_threshold": (0.3, 0.4, 0.5),
    "min_size": (8, 16),
}
# Where each merger parameter lives in a training config.
_MASKRCNN_FIELDS = {"score_threshold": ("maskrcnn", "box_score_thresh"), "mask_threshold": ("maskrcnn", "mask_threshold"),
                    "nms_threshold": ("maskrcnn", "box_nms_thresh"), "min_size": ("eval", "min_size")}


def _with_params(cfg, params: dict):
    """`cfg` with tuned parameters: eval fields for the UNet, maskrcnn/eval fields for the detector."""
    if cfg.model.kind != "maskrcnn":
        return cfg.replace(eval=dataclasses.replace(cfg.eval, **params))
    sections = {"maskrcnn": {}, "eval": {}}
    for k, v in params.items():
        section, name = _MASKRCNN_FIELDS[k]
        sections[section][name] = v
    return cfg.replace(maskrcnn=dataclasses.replace(cfg.maskrcnn, **sections["maskrcnn"]),
                       eval=dataclasses.replace(cfg.eval, **sections["eval"]))


def _maskrcnn_scorer(model, cfg, device, samples, grid, progress):
    """Raw detections per image, once, through the runtime; returns score(params) -> mean DSB."""
    heads = model.roi_heads
    heads.score_thresh = float(min(grid["score_threshold"]))
    heads.nms_thresh = float(max(grid["nms_threshold"]))
    predictor = runtime_predictor(model, cfg, device)
    it = progress(samples, "detect") if progress else samples
    raw = [(s.labels, predictor.detections(s.image)) for s in it]

    def score(params: dict) -> float:
        return float(np.mean([dsb_score(gt, predictor.merge_detections(found, gt.shape, **params)[0])
                              for gt, found in raw]))

    return score


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
    if cfg.model.kind == "unet" and cfg.eval.instances != "watershed":
        raise ValueError(f"{checkpoint}: UNet tuning applies to the watershed post-processing only")
    if cfg.model.kind == "maskrcnn" and cfg.data.resize:
        raise ValueError(f"{checkpoint}: Mask R-CNN tuning merges detections at the image's size; data.resize is not supported")
    ckpt = load_checkpoint(checkpoint)
    sp = load_splits(splits) if splits else None
    ids = list(sp[split]) if sp else list(ckpt["splits"]["splits"][split])
    if limit:
        ids = ids[:limit]
    res = open_dataset(data, cache_dir=cache, ids=ids)
    if res.errors:
        raise ValueError(f"{len(res.errors)} unreadable sample(s), first: {res.errors[0]}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    if cfg.model.kind == "maskrcnn":
        grid = grid or MASKRCNN_GRID
        score = _maskrcnn_scorer(model, cfg, device, res.samples, grid, progress)
        baseline_params = {k: getattr(getattr(cfg, sec), name) for k, (sec, name) in _MASKRCNN_FIELDS.items()}
    else:
        grid = grid or DEFAULT_GRID
        it = progress(res.samples, "predict") if progress else res.samples
        # The runtime's own normalisation, tiling, blending and instance step, as validation and
        # `nseg-infer run` use.
        predictor = runtime_predictor(model, cfg, device)
        probs = [(s.labels, predictor.probabilities(s.image)) for s in it]

        def score(params: dict) -> float:
            return float(np.mean([dsb_score(gt, predictor.instances(p, gt.shape, **params)) for gt, p in probs]))

        baseline_params = {k: getattr(cfg.eval, k) for k in grid}
    keys = list(grid)
    rows = []
    combos = list(itertools.product(*(grid[k] for k in keys)))
    for values in progress(combos, "grid") if progress else combos:
        params = dict(zip(keys, values, strict=True))
        rows.append({**params, "dsb": score(params)})
    rows.sort(key=lambda r: -r["dsb"])
    baseline = score(baseline_params)
    best = {k: rows[0][k] for k in keys}
    tuned = _with_params(cfg, best)
    ckpt["config"] = json.loads(json.dumps(tuned.to_dict()))
    ckpt["tuning"] = {"split": split, "n_images": len(res.samples), "baseline_dsb": baseline, "best_dsb": rows[0]["dsb"], "grid": {k: list(v) for k, v in grid.items()}}
    for k in ("optimizer", "scheduler", "scaler"):  # a deployable checkpoint needs weights only
        ckpt.pop(k, None)
    save_atomic(ckpt, out)
    write_text_atomic(out.parent / f"{out.stem}.tuning.json", json.dumps({"best": best, "baseline_dsb": baseline, "table": rows}, indent=1))
    return TuneResult(best=best, best_dsb=rows[0]["dsb"], baseline_dsb=baseline, table=rows)
