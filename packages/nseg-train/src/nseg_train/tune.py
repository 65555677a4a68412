"""Tune post-processing thresholds on the validation split (never on the locked one).

The model runs once per image through the runtime's Predictor (UNet: the blended field; Mask
R-CNN: the raw tile detections); only the cheap instance step is repeated per parameter set. The
winning parameters are written into a copy of the checkpoint's config, so evaluation, export and
the runtime all use them.

UNet: a global grid first; then, from its best, a coordinate search per modality (as the runtime
infers it from each image) that may also switch to h-maxima seeds. Each idea is also scored alone
on the same fields, so `tuning.json` holds the ablation: global thresholds, h-maxima seeds alone,
per-modality thresholds alone, and both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nseg_data.atomic import write_text_atomic
from nseg_data.dataset import open_dataset
from nseg_data.metrics import dsb_score
from nseg_data.sources import source_of
from nseg_data.split import load_splits
from nseg_infer.engine.cpu import cpu_threads

from nseg_train.checkpoint import load_checkpoint, load_model, save_atomic
from nseg_train.deploy import runtime_predictor
from nseg_train.tasks import runtime_input

# min_seed_area matters most for large, elongated H&E nuclei, whose distance maps break into
# several small cores that would each seed a nucleus.
DEFAULT_GRID = {
    "fg_threshold": (0.4, 0.5, 0.6),
    "seed_threshold": (0.4, 0.5, 0.6, 0.7),
    "min_seed_area": (3, 10, 30),
    "min_size": (8, 24, 48),
}


# Searched one parameter at a time from the global best, per modality and for h-maxima seeds.
REFINE_GRID = {
    "fg_threshold": (0.3, 0.4, 0.5, 0.6),
    "seed_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "seed_h": (0.0, 0.1, 0.2, 0.3, 0.4),
    "min_seed_area": (3, 10, 30, 60),
    "min_size": (8, 24, 48, 96),
}
# Fewer validation images than this in a modality: it keeps the global parameters (no overfit
# to two or three images).
MIN_MODALITY_IMAGES = 5


def coordinate_search(score, start: dict, grid: dict[str, tuple], *, passes: int = 2) -> tuple[dict, float]:
    """Greedy ascent of `score(params)`: each parameter in turn over its grid values, the others
    fixed, until a pass improves nothing. Returns (best params, best score)."""
    best, best_s = dict(start), score(start)
    for _ in range(passes):
        improved = False
        for k, values in grid.items():
            for v in values:
                if v == best.get(k):
                    continue
                cand = {**best, k: v}
                if (sc := score(cand)) > best_s + 1e-9:
                    best, best_s, improved = cand, sc, True
        if not improved:
            break
    return best, best_s


@dataclass(frozen=True)
class Ablation:
    """Validation DSB of each post-processing idea alone and of their combination."""

    global_thresholds: float
    h_maxima: float
    by_modality: float
    combined: float
    global_params: dict
    h_maxima_params: dict
    modality_params: dict[str, dict]
    combined_params: dict[str, dict]
    modality_counts: dict[str, int]
    # Each row's mean DSB per modality: {"h_maxima": {"histology": ...}, ...}
    per_modality: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


# A source that falls below its floor costs the objective this much per unit of DSB lost: far more
# than any gain elsewhere can buy back.
FLOOR_PENALTY = 10.0


@dataclass(frozen=True)
class SourceObjective:
    """What the searches maximise, from every image's DSB: the mean of the sources' mean DSB (as
    training's best.pt is chosen: a 12-image source counts as much as a 161-image one), and with
    `floor` (each source's mean under the checkpoint's own settings) any source more than
    `max_drop` below its floor is penalised, so tuning never buys one source's gain with another's
    loss. One source: the plain mean."""

    sources: tuple[str, ...]
    floor: dict[str, float] | None = None
    max_drop: float = 0.005

    def __post_init__(self) -> None:
        if self.max_drop < 0:
            raise ValueError(f"max_drop must be >= 0, got {self.max_drop}")

    @functools.cached_property
    def _members(self) -> dict[str, np.ndarray]:
        # Computed once: the searches call the objective thousands of times.
        src = np.asarray(self.sources)
        return {s: np.flatnonzero(src == s) for s in sorted(set(self.sources))}

    def per_source(self, scores) -> dict[str, float]:
        v = np.asarray(scores, float)
        return {s: float(v[idx].mean()) for s, idx in self._members.items()}

    def __call__(self, scores) -> float:
        means = self.per_source(scores)
        value = float(np.mean(list(means.values())))
        if self.floor:
            value -= FLOOR_PENALTY * sum(max(0.0, self.floor[s] - self.max_drop - m) for s, m in means.items())
        return value


def unet_ablation(score_images, n: int, modalities: list[str], start: dict, *,
                  grid: dict[str, tuple] = REFINE_GRID, min_images: int = MIN_MODALITY_IMAGES,
                  objective=None) -> Ablation:
    """`score_images(params, indices)` -> per-image DSBs. From the global best `start`: h-maxima
    seeds for all images, per-modality parameters without them, and per-modality with them.
    `objective(scores of all n images)` is what every search maximises (default: their mean); a
    modality's search scores its own images with each candidate and the others as chosen so far."""
    every = list(range(n))
    objective = objective or (lambda v: float(np.mean(v)))
    mean_all = lambda p: objective(score_images(p, every))  # noqa: E731
    no_h = {k: v for k, v in grid.items() if k != "seed_h"}
    h_values = tuple(v for v in grid.get("seed_h", ()) if v > 0) or (0.2,)
    h_grid = {"seed_h": h_values, **{k: grid[k] for k in ("seed_threshold", "min_seed_area") if k in grid}}
    h_params, h_score = coordinate_search(mean_all, {**start, "seed_h": h_values[-1]}, h_grid)
    if h_score <= mean_all(start):
        h_params, h_score = dict(start), mean_all(start)

    def per_modality(g: dict[str, tuple]) -> tuple[dict[str, dict], float]:
        chosen: dict[str, dict] = {}
        scores = np.asarray(score_images(start, every), float)
        for m in sorted(set(modalities)):
            idx = [i for i, x in enumerate(modalities) if x == m]
            params = dict(start)
            if len(idx) >= min_images:
                def with_m(p: dict, idx=idx) -> float:
                    v = scores.copy()
                    v[idx] = score_images(p, idx)
                    return objective(v)

                params, _ = coordinate_search(with_m, start, g)
            chosen[m] = params
            scores[idx] = score_images(params, idx)
        return chosen, objective(scores)

    mod_params, mod_score = per_modality(no_h)
    comb_params, comb_score = per_modality(grid)
    counts = {m: modalities.count(m) for m in sorted(set(modalities))}

    def breakdown(params_of) -> dict[str, float]:
        out = {}
        for m in counts:
            idx = [i for i, x in enumerate(modalities) if x == m]
            out[m] = float(np.mean(score_images(params_of(m), idx)))
        return out

    per_mod = {"global_thresholds": breakdown(lambda m: start), "h_maxima": breakdown(lambda m: h_params),
               "by_modality": breakdown(lambda m: mod_params[m]), "combined": breakdown(lambda m: comb_params[m])}
    return Ablation(mean_all(start), h_score, mod_score, comb_score, dict(start), h_params, mod_params,
                    comb_params, counts, per_mod)


def overrides(base: dict, per_modality: dict[str, dict]) -> dict[str, dict]:
    """The `by_modality` section: for each modality, the parameters that differ from `base`."""
    out = {m: {k: v for k, v in p.items() if base.get(k) != v} for m, p in per_modality.items()}
    return {m: d for m, d in out.items() if d}


# The fields a scorer's worker processes read: set before the pool forks, so every worker shares
# the parent's arrays (copy-on-write) instead of receiving them pickled.
_FORKED: tuple | None = None


def _score_forked(job: tuple[dict, int]) -> float:
    params, i = job
    predictor, probs = _FORKED
    return _score(predictor, probs[i], params)


def _score(predictor, item: tuple, params: dict) -> float:
    gt, inp, fields = item
    return dsb_score(gt, inp.to_input(predictor.instances(fields, **params))[0])


class InstanceScorer:
    """`scorer(params, indices)` -> each image's DSB under the instance parameters `params`, from
    its fields (the model ran once). Memoised, as the searches revisit parameter sets, and spread
    over `workers` processes (default: the cores) where the platform forks: the instance step is
    pure NumPy work on one core, repeated thousands of times. `close()` stops the workers."""

    def __init__(self, predictor, probs: list[tuple], *, workers: int | None = None) -> None:
        global _FORKED
        self.predictor, self.probs = predictor, probs
        self.memo: dict[tuple, float] = {}
        self.workers = workers or cpu_threads()
        self.pool = None
        if self.workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            _FORKED = (predictor, probs)
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))

    def __call__(self, params: dict, idx) -> list[float]:
        key = tuple(sorted(params.items()))
        todo = [i for i in idx if (key, i) not in self.memo]
        if self.pool is not None and len(todo) > 1:
            chunk = max(1, len(todo) // (4 * self.workers))
            done = self.pool.map(_score_forked, [(params, i) for i in todo], chunksize=chunk)
        else:
            done = (_score(self.predictor, self.probs[i], params) for i in todo)
        for i, v in zip(todo, done, strict=True):
            self.memo[key, i] = v
        return [self.memo[key, i] for i in idx]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


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
    """Raw detections per image, once, through the runtime; returns score(params) -> every
    image's DSB."""
    heads = model.roi_heads
    heads.score_thresh = float(min(grid["score_threshold"]))
    heads.nms_thresh = float(max(grid["nms_threshold"]))
    predictor = runtime_predictor(model, cfg, device)
    it = progress(samples, "detect") if progress else samples
    raw = [(s.labels, predictor.detections(s.image)) for s in it]

    def score(params: dict) -> list[float]:
        return [dsb_score(gt, predictor.merge_detections(found, gt.shape, **params)[0]) for gt, found in raw]

    return score


@dataclass(frozen=True)
class TuneResult:
    best: dict[str, float]
    best_dsb: float
    baseline_dsb: float
    table: list[dict]
    by_modality: dict[str, dict] | None = None
    ablation: Ablation | None = None
    images: int = 0  # validation images tuned on
    # Several sources: each one's mean DSB under the checkpoint's own settings and as tuned.
    per_source: dict[str, dict[str, float]] | None = None


def tune_checkpoint(
    checkpoint: Path, *, data: Path, splits: Path | None, out: Path, cache: Path | None, split: str = "val",
    grid: dict[str, tuple] | None = None, limit: int | None = None, progress=None, max_drop: float = 0.005,
    workers: int | None = None,
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
    if cfg.data.modalities:  # an expert is tuned on the images it is for, as it was validated
        modality = sp.modality if sp else ckpt["splits"]["modality"]
        ids = [i for i in ids if modality.get(i) in cfg.data.modalities]
    if limit:
        ids = ids[:limit]
    res = open_dataset(data, cache_dir=cache, ids=ids)
    if res.errors:
        raise ValueError(f"{len(res.errors)} unreadable sample(s), first: {res.errors[0]}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    sources = tuple(source_of(s) for s in res.samples)
    with contextlib.ExitStack() as cleanup:
        return _search(cfg, ckpt, model, device, res, sources, grid, progress, max_drop, workers, cleanup,
                       split=split, out=out)


def _search(cfg, ckpt, model, device, res, sources, grid, progress, max_drop, workers, cleanup, *, split, out):
    """`tune_checkpoint`'s searches and outputs, once the checkpoint and images are loaded."""
    if cfg.model.kind == "maskrcnn":
        grid = grid or MASKRCNN_GRID
        per_image = _maskrcnn_scorer(model, cfg, device, res.samples, grid, progress)
        baseline_params = {k: getattr(getattr(cfg, sec), name) for k, (sec, name) in _MASKRCNN_FIELDS.items()}
        own = per_image(baseline_params)
    else:
        grid = grid or DEFAULT_GRID
        it = progress(res.samples, "predict") if progress else res.samples
        # The runtime's own normalisation, resize, tiling, blending and instance step, as
        # validation and `nseg-infer run` use: the fields of each image's instance blocks, on which
        # the instance step gives exactly `predict`'s labels at every image size.
        predictor = runtime_predictor(model, cfg, device)
        probs = []
        for s in it:
            inp = runtime_input(predictor, s.image)
            probs.append((s.labels, inp, predictor.probabilities(inp.source)))
        modalities = [predictor.modality(s.image) for s in res.samples]
        score_images = InstanceScorer(predictor, probs, workers=workers)
        cleanup.callback(score_images.close)

        def per_image(params: dict) -> list[float]:
            # Explicit params, no modality: the checkpoint's own by_modality never leaks in.
            return score_images({"seed_h": 0.0, **params}, range(len(probs)))

        def by_modality_scores(base: dict, per_modality: dict | None) -> np.ndarray:
            """Every image's DSB under `base` with its modality's overrides, as the runtime applies them."""
            out = np.zeros(len(probs))
            for m in set(modalities):
                idx = [i for i, x in enumerate(modalities) if x == m]
                out[idx] = score_images({**base, **(per_modality or {}).get(m, {})}, idx)
            return out

        baseline_params = {k: getattr(cfg.eval, k) for k in grid}
        # The checkpoint's own settings, its by_modality included, as its validation scored it.
        own_params = {**{k: getattr(cfg.eval, k) for k in REFINE_GRID}, "seed_h": cfg.eval.seed_h}
        own = by_modality_scores(own_params, cfg.eval.by_modality)
    several = len(set(sources)) > 1
    objective = SourceObjective(sources, SourceObjective(sources).per_source(own) if several else None, max_drop)
    score = lambda params: objective(per_image(params))  # noqa: E731
    keys = list(grid)
    rows = []
    combos = list(itertools.product(*(grid[k] for k in keys)))
    for values in progress(combos, "grid") if progress else combos:
        params = dict(zip(keys, values, strict=True))
        rows.append({**params, "dsb": score(params)})
    rows.sort(key=lambda r: -r["dsb"])
    baseline = score(baseline_params)
    best = {k: rows[0][k] for k in keys}
    best_dsb = rows[0]["dsb"]
    ablation, by_modality = None, None
    if cfg.model.kind == "unet" and cfg.eval.instances == "watershed":
        start = {**{k: getattr(cfg.eval, k) for k in REFINE_GRID}, "seed_h": 0.0, **best}
        ablation = unet_ablation(score_images, len(probs), modalities, start, objective=objective)
        # Ship what validation prefers: global thresholds, h-maxima for all, or per-modality.
        options = [(ablation.global_thresholds, start, {}), (ablation.h_maxima, ablation.h_maxima_params, {}),
                   (ablation.by_modality, start, overrides(start, ablation.modality_params)),
                   (ablation.combined, start, overrides(start, ablation.combined_params))]
        best_dsb, base, by_modality = max(options, key=lambda o: o[0])
        best = {**base, "by_modality": by_modality or None}
        chosen = by_modality_scores(base, by_modality)
    else:
        chosen = np.asarray(per_image(best))
    per_source = {"own settings": objective.per_source(own), "tuned": objective.per_source(chosen)} if several else None
    if several and objective(chosen) < objective(own):
        # Nothing the grid offers beats the checkpoint's own settings under the floor: keep them.
        best = {**own_params, "by_modality": cfg.eval.by_modality} if cfg.model.kind == "unet" else baseline_params
        best_dsb, per_source["tuned"] = objective(own), per_source["own settings"]
        by_modality = best.get("by_modality") if cfg.model.kind == "unet" else None
    tuned = _with_params(cfg, best)
    ckpt["config"] = json.loads(json.dumps(tuned.to_dict()))
    goal = (f"mean of the sources' mean DSB, no source more than {max_drop} below its DSB under the checkpoint's "
            "own settings" if several else "mean DSB")
    ckpt["tuning"] = {"split": split, "n_images": len(res.samples), "objective": goal, "baseline_dsb": baseline,
                      "best_dsb": best_dsb, "per_source": per_source, "grid": {k: list(v) for k, v in grid.items()}}
    for k in ("optimizer", "scheduler", "scaler"):  # a deployable checkpoint needs weights only
        ckpt.pop(k, None)
    save_atomic(ckpt, out)
    report = {"best": best, "objective": goal, "best_dsb": best_dsb, "baseline_dsb": baseline, "per_source": per_source,
              "table": rows}
    if ablation is not None:
        report["ablation"] = dataclasses.asdict(ablation)
    write_text_atomic(out.parent / f"{out.stem}.tuning.json", json.dumps(report, indent=1))
    return TuneResult(best=best, best_dsb=best_dsb, baseline_dsb=baseline, table=rows, by_modality=by_modality,
                      ablation=ablation, images=len(res.samples), per_source=per_source)
