"""Adapt the default UNet to a lab's few annotated images, and keep it only if it is better.

    adapt(data, out, AdaptConfig(...)) -> AdaptResult        (CLI: `nseg-train adapt DATA --out OUT`)

The recipe, for a handful of images rather than a data set:

- **Held-out images.** A quarter of the lab's images (at least one) is set aside; with a single
  image, its bottom quarter is. They judge the fine-tune and are never trained on.
- **Sized in steps and minutes**, not epochs: `steps` optimizer steps of `batch` random crops on
  one warmup + cosine schedule, or fewer when `minutes` runs out first: the schedule follows
  whichever is further along, so the fine-tune ends annealed inside the budget.
- **Augmentations for the lab's modality**: a lab of one look (all H&E, all fluorescence, ...)
  gets no inversion or grayscale (they turn one look into another, which the default needed and a
  lab does not), and stain jitter only for H&E; a mixed lab keeps the default's augmentations.
- **Replay**: `replay` of the crops come from a small CC0 set of the default's own training
  images shipped in `nseg_train/assets/replay` (see its README), so what the model knew survives.
- **Thresholds** start from the default's tuned watershed thresholds; with at least
  `min_tune_images` held-out images of a modality they are re-tuned on them, for the default and
  the fine-tune alike, so neither is judged with thresholds the other was denied. A re-tune is
  kept only if it holds up on images it was not tuned on (`stoploss.retune`: tuned on the other folds,
  scored on each, it must beat the model's own thresholds by `min_gain`): thresholds fitted to
  three tiles can score higher there and lower everywhere else.
- **Stop-loss**: the fine-tune is kept only if it beats the default on the held-out images (mean
  DSB score, each image scored with thresholds not tuned on it) by at least `min_gain`; otherwise
  the default (with the same threshold treatment) is what OUT/model.pt holds.
  `AdaptResult.message` says which was kept and why, with the numbers (`stoploss`).

OUT holds `model.pt` (weights-only checkpoint of the kept model; `nseg-export onnx` makes a bundle
of it), `adapt.json` (the decision, both models' held-out scores, thresholds, timing, machine) and
`splits.json` (which images trained and which judged).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from nseg_data.atomic import write_text_atomic
from nseg_data.dataset import open_dataset
from nseg_data.errors import DataError
from nseg_data.sample import Sample
from nseg_data.split import Splits, save_splits
from skimage.segmentation import relabel_sequential

from nseg_train import default_checkpoint_path
from nseg_train.augment import geometric, photometric, random_crop
from nseg_train.checkpoint import FORMAT, load_checkpoint, load_model, save_atomic, versions
from nseg_train.config import AugmentConfig, ConfigError, TrainConfig
from nseg_train.datasets import Prepared, prepare
from nseg_train.machine import describe
from nseg_train.stoploss import Judged, decide, judge
from nseg_train.tasks import TASKS

REPLAY_DIR = Path(__file__).resolve().parent / "assets" / "replay"


class AdaptError(RuntimeError):
    pass


class AdaptCancelled(AdaptError):
    pass


@dataclass(frozen=True)
class AdaptConfig:
    # Measured on H&E tiles of a patient held back: 2400 steps (10 min on 2 free cores) gained twice
    # what 400 did; on a slower or busy CPU the minutes end training first.
    steps: int = 2400
    minutes: float | None = 12.0  # wall-clock budget of the training steps; None: all `steps`
    batch: int = 4
    crop: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    replay: float = 0.25  # fraction of crops drawn from the replay set; 0: none
    holdout: float = 0.25  # fraction of the lab's images held out to judge (at least one)
    min_tune_images: int = 3  # held-out images of a modality needed to re-tune its thresholds (>= 2)
    # The fine-tune must beat the default by this much held-out DSB: on one or two images a
    # smaller difference is noise (a fine-tune 0.0004 ahead on one image was 0.03 worse on 30 others).
    min_gain: float = 0.02
    seed: int = 0
    init: str = "default"  # the checkpoint to adapt: "default" (the shipped UNet) or a path
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1:
            raise ConfigError("adapt: steps and batch must be >= 1")
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"adapt: minutes must be positive (or None: no time budget), got {self.minutes}")
        if self.crop < 32 or self.crop % 16:
            raise ConfigError(f"adapt: crop must be a multiple of 16 and >= 32, got {self.crop}")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("adapt: lr must be positive, weight_decay and warmup_steps >= 0")
        if not 0 <= self.replay < 1:
            raise ConfigError(f"adapt: replay must be in [0, 1), got {self.replay}")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"adapt: holdout must be in (0, 1), got {self.holdout}")
        if self.min_tune_images < 2:  # a re-tune is checked on images it was not tuned on
            raise ConfigError(f"adapt: min_tune_images must be >= 2, got {self.min_tune_images}")
        if not 0 <= self.min_gain < 1:
            raise ConfigError(f"adapt: min_gain must be in [0, 1), got {self.min_gain}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"adapt: device must be auto, cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class Progress:
    phase: str  # "load", "train", "judge"
    step: int
    total: int
    loss: float | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class AdaptResult:
    kept: str  # "adapted" or "default"
    message: str
    default: Judged
    adapted: Judged
    model_path: Path
    steps: int
    train_seconds: float
    train_ids: tuple[str, ...]
    heldout_ids: tuple[str, ...]
    report: dict = field(repr=False, default_factory=dict)
    # The fine-tuned model and its config (with the thresholds it was judged with), kept or not:
    # for studies of what the stop-loss prevented; never written when the default is kept.
    finetuned: tuple[torch.nn.Module, TrainConfig] | None = field(repr=False, default=None)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise AdaptError("device cuda was requested but no CUDA GPU is available")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def init_checkpoint(init: str) -> Path:
    path = default_checkpoint_path("unet") if init == "default" else Path(init)
    if not path.is_file():
        raise AdaptError(f"{path}: checkpoint to adapt not found")
    return path


def load_lab(data: Path) -> list[Sample]:
    res = open_dataset(Path(data))
    if res.errors:
        listing = "\n  ".join(str(e) for e in res.errors[:20])
        raise AdaptError(f"{len(res.errors)} image(s) of {data} could not be read:\n  {listing}")
    missing = [s.source for s in res.samples if s.labels is None or not s.labels.any()]
    if missing:
        raise AdaptError(f"{missing[0]}: no labelled nuclei (every image needs its labels: NAME.labels.tif)")
    if not res.samples:
        raise AdaptError(f"{data}: no annotated images (expected NAME.png + NAME.labels.tif)")
    return sorted(res.samples, key=lambda s: s.id)


def _part(s: Sample, rows: slice, suffix: str) -> Sample:
    lab = relabel_sequential(s.labels[rows])[0].astype(np.uint32)
    return Sample(f"{s.id}{suffix}", np.ascontiguousarray(s.image[rows]), lab, s.modality, s.source)


def hold_out(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, held out): a `fraction` of the images (at least one, never all); a single image is
    cut in two instead, its bottom quarter held out."""
    if len(samples) == 1:
        s = samples[0]
        cut = int(round(s.image.shape[0] * 0.75))
        if cut < 32 or s.image.shape[0] - cut < 32:
            raise AdaptError(f"{s.source}: one image of {s.image.shape[0]} rows is too small to train on and judge "
                             "with (at least 128 rows, or two images)")
        train, held = _part(s, slice(0, cut), ":top"), _part(s, slice(cut, None), ":bottom")
        if not train.labels.any() or not held.labels.any():
            raise AdaptError(f"{s.source}: annotate nuclei in both the top three quarters and the bottom quarter "
                             "of the image (the bottom quarter judges the fine-tune), or give two images")
        return [train], [held]
    # Half up (10 images: 3 held out), where round() would give 2 and leave too few to re-tune on.
    n_held = min(len(samples) - 1, max(1, int(len(samples) * fraction + 0.5)))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(len(samples), size=n_held, replace=False).tolist())
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


def lab_augment(base: AugmentConfig, modalities: set[str]) -> AugmentConfig:
    """The default's augmentations, fitted to a lab of one modality (see the module docstring)."""
    if len(modalities) != 1:
        return base
    histology = modalities == {"histology"}
    return dataclasses.replace(base, invert_p=0.0, grayscale_p=0.0, hed=base.hed if histology else 0.0)


def draw_weights(n_lab: int, n_replay: int, replay: float) -> np.ndarray:
    """Per-image draw probabilities: the lab's images share 1 - replay, the replay images replay."""
    if n_replay == 0 or replay == 0:
        return np.full(n_lab, 1.0 / n_lab)
    return np.concatenate([np.full(n_lab, (1 - replay) / n_lab), np.full(n_replay, replay / n_replay)])


def draw_batch(rng: np.random.Generator, items: list[Prepared], weights: np.ndarray, cfg: TrainConfig,
               batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    aug, size = cfg.augment, cfg.data.crop_size
    xs, ys = [], []
    for _ in range(batch):
        p = items[int(rng.choice(len(items), p=weights))]
        lo, hi = aug.scale
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
        img, tgt = random_crop(rng, p.image, p.target, size, scale)
        img, tgt = geometric(rng, img, tgt, aug)
        xs.append(np.ascontiguousarray(photometric(rng, img, aug).transpose(2, 0, 1)))
        ys.append(tgt)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def lr_factor(frac: float, warmup: float) -> float:
    """Linear warmup over the first `warmup` of the run, then a cosine to 2 % at its end (`frac` 1)."""
    if frac < warmup:
        return max(frac / warmup, 0.01)
    t = min(1.0, (frac - warmup) / max(1e-9, 1 - warmup))
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))


def finetune(model: torch.nn.Module, cfg: TrainConfig, items: list[Prepared], weights: np.ndarray,
             ac: AdaptConfig, device: torch.device, *, progress=None, cancel=None) -> tuple[int, float, float, list[float]]:
    """Train in place; returns (steps run, seconds, CPU seconds of this process, losses).

    The run's progress is whichever is further along, steps (of `ac.steps`) or time (of
    `ac.minutes`), and the schedule follows it: on a machine slower than planned, or one that
    slows down mid-run (other work on a shared CPU), the fine-tune still ends annealed, on time."""
    task = TASKS["unet"](cfg)
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=ac.lr, weight_decay=ac.weight_decay)
    rng = np.random.default_rng([ac.seed, 1])
    budget = ac.minutes * 60 if ac.minutes is not None else math.inf
    warmup = ac.warmup_steps / ac.steps
    losses: list[float] = []
    t0, cpu0 = time.perf_counter(), time.process_time()
    step, frac = 0, 0.0
    while frac < 1:
        if cancel is not None and cancel():
            raise AdaptCancelled(f"cancelled after {step} steps")
        for group in opt.param_groups:
            group["lr"] = ac.lr * lr_factor(frac, warmup)
        loss, _ = task.loss(model, draw_batch(rng, items, weights, cfg, ac.batch), device)
        if not torch.isfinite(loss):
            raise AdaptError(f"loss became {float(loss)} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        elapsed = time.perf_counter() - t0
        frac = max(step / ac.steps, elapsed / budget)
        if progress is not None:
            # The total is an estimate while time leads: the steps the budget allows at this pace.
            progress(Progress("train", step, step if frac >= 1 else max(step + 1, round(step / frac)), losses[-1], elapsed))
    model.eval()
    return step, time.perf_counter() - t0, time.process_time() - cpu0, losses


def _splits(train: list[Sample], held: list[Sample], seed: int) -> Splits:
    return Splits(seed=seed, locked_fraction=0.0, val_fraction=len(held) / (len(train) + len(held)),
                  ids={"locked": (), "val": tuple(s.id for s in held), "train": tuple(s.id for s in train)},
                  modality={s.id: str(s.modality) for s in [*train, *held]})


def adapt(data: Path, out: Path, ac: AdaptConfig = AdaptConfig(), *, progress: Callable[[Progress], None] | None = None,
          cancel: Callable[[], bool] | None = None) -> AdaptResult:
    """Fine-tune `ac.init` on the folder `data`, judge it against the start on held-out images,
    and write the kept model to OUT/model.pt (see the module docstring)."""
    out = Path(out)
    if (out / "model.pt").exists():
        raise AdaptError(f"{out}: already holds an adapted model (model.pt); choose another --out")
    init_path = init_checkpoint(ac.init)
    device = resolve_device(ac.device)
    try:
        lab = load_lab(Path(data))
    except DataError as e:
        raise AdaptError(str(e)) from e
    train, held = hold_out(lab, ac.holdout, ac.seed)
    default_model, default_cfg, default_ckpt = load_model(init_path)
    if default_cfg.model.kind != "unet":
        raise AdaptError(f"{init_path}: adapt fine-tunes a UNet, this checkpoint is a {default_cfg.model.kind}")
    replay = load_lab(REPLAY_DIR) if ac.replay > 0 else []
    cfg = default_cfg.replace(
        name="adapt", seed=ac.seed,
        augment=lab_augment(default_cfg.augment, {str(s.modality) for s in lab}),
        data=dataclasses.replace(default_cfg.data, crop_size=ac.crop),
        optim=dataclasses.replace(default_cfg.optim, lr=ac.lr, weight_decay=ac.weight_decay, batch_size=ac.batch,
                                  amp=device.type == "cuda"))
    if progress is not None:
        progress(Progress("load", 0, ac.steps))
    torch.manual_seed(ac.seed)
    items = prepare(train, cfg) + prepare(replay, cfg)
    model, _, _ = load_model(init_path)
    steps, seconds, cpu_seconds, losses = finetune(model, cfg, items, draw_weights(len(train), len(replay), ac.replay), ac, device,
                                      progress=progress, cancel=cancel)
    if progress is not None:
        progress(Progress("judge", steps, steps, None, seconds))
    default_j = judge(default_model.to(device), default_cfg, held, device, min_tune_images=ac.min_tune_images,
                      min_gain=ac.min_gain)
    adapted_j = judge(model, cfg, held, device, min_tune_images=ac.min_tune_images, min_gain=ac.min_gain)
    kept, message = decide(default_j, adapted_j, len(held), ac.min_gain)

    winner = adapted_j if kept == "adapted" else default_j
    kept_cfg = (cfg if kept == "adapted" else default_cfg)
    kept_cfg = kept_cfg.replace(eval=dataclasses.replace(kept_cfg.eval, **winner.eval_params))
    splits = _splits(train, held, ac.seed)
    report = {
        "kept": kept, "message": message, "data": str(data), "init": str(init_path),
        "train": [s.id for s in train], "heldout": [s.id for s in held], "replay_images": len(replay),
        "default": dataclasses.asdict(default_j), "adapted": dataclasses.asdict(adapted_j),
        "steps": steps, "train_seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(1, steps), 3),
        # CPU time over the cores torch used: the wall-clock minutes of the same steps on a machine
        # whose cores were free (a shared machine's wall clock also counts the others' work).
        "train_cpu_seconds": round(cpu_seconds, 1), "torch_threads": torch.get_num_threads(),
        "final_loss": float(np.mean(losses[-10:])) if losses else None,
        "config": dataclasses.asdict(ac), "augment": dataclasses.asdict(cfg.augment), "machine": describe(str(device)),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_splits(splits, out / "splits.json")
    base = load_checkpoint(init_path)
    ckpt = {
        "format": FORMAT, "kind": "unet", "config": json.loads(json.dumps(kept_cfg.to_dict())),
        "model": (model if kept == "adapted" else default_model).state_dict(),
        "epoch": int(base.get("epoch", 0)) if kept == "default" else 0, "step": steps if kept == "adapted" else base.get("step"),
        # The default's own split when it is kept (its weights never saw the lab); the lab's when adapted.
        "splits": default_ckpt["splits"] if kept == "default" else splits.to_json(),
        "splits_sha256": default_ckpt["splits_sha256"] if kept == "default" else splits.sha256(),
        "metrics": {"heldout_dsb": winner.dsb, "heldout_f1_50": winner.f1_50},
        "train_seconds": float(base.get("train_seconds") or 0.0) + (seconds if kept == "adapted" else 0.0),
        "init": {"path": str(init_path), "splits_sha256": base.get("splits_sha256"), "epochs": int(base.get("epoch", -1)) + 1},
        "versions": versions(), "machine": describe(str(device)), "adapt": json.loads(json.dumps(report)),
    }
    save_atomic(ckpt, out / "model.pt")
    write_text_atomic(out / "adapt.json", json.dumps(report, indent=1))
    finetuned = (model, cfg.replace(eval=dataclasses.replace(cfg.eval, **adapted_j.eval_params)))
    return AdaptResult(kept, message, default_j, adapted_j, out / "model.pt", steps, seconds,
                       tuple(s.id for s in train), tuple(s.id for s in held), report, finetuned)
