"""One training loop for every model kind: AMP, DDP, checkpoints, resume, logs, curves.

A run directory holds: config.yaml, splits.json, last.pt (every epoch), best.pt (best validation
DSB score), log.csv, tb/ (TensorBoard), curves.png, and val/ reports. The data may be in any form
nseg-data reads; without a splits file a split of it is made (`nseg_data.split.training_splits`) and
kept as splits.json, which `resume=True` reuses. `resume=True` continues from last.pt with the same
config and split; the data order depends only on (seed, epoch, index), so a resumed run sees
exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from nseg_data.atomic import atomic_path, write_text_atomic
from nseg_data.dataset import LoadResult, open_dataset
from nseg_data.sample import Sample
from nseg_data.sources import is_catalogue, load_catalogue, source_of
from nseg_data.split import Splits, load_splits, save_splits, training_splits
from nseg_infer.engine.cpu import cpu_bf16_native

from nseg_train import default_checkpoint_path
from nseg_train.checkpoint import FORMAT, init_epochs, load_checkpoint, save_atomic, versions
from nseg_train.config import TrainConfig
from nseg_train.distributed import DistInfo, barrier, broadcast_object, cleanup, init_distributed
from nseg_train.evaluate import evaluate_samples, markdown_table
from nseg_train.machine import describe
from nseg_train.models import load_weights
from nseg_train.tasks import TASKS
from nseg_train.viz import plot_curves


class TrainError(RuntimeError):
    pass


SPLITS_FILE = "splits.json"
DEFAULT_INIT = "default"  # `--init default`: the shipped checkpoint of the model kind


@dataclass(frozen=True)
class RunOptions:
    data_dir: Path  # any form nseg-data reads
    splits_file: Path | None  # None: OUT/splits.json when resuming, else a new split saved there
    out_dir: Path
    cache_dir: Path | None = None
    resume: bool = False
    device: str = "auto"
    epochs: int | None = None
    limit_train: int | None = None
    limit_val: int | None = None
    workers: int | None = None
    progress: bool = True
    stop_after: int | None = None  # epochs to run in this invocation (time-boxed sessions); resume later
    init: Path | str | None = None  # start from this checkpoint's weights (fresh optimizer and schedule), or "default"


def pick_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("--device cuda was requested but no CUDA GPU is available")
        return torch.device("cuda", info.local_rank)
    if name != "cpu":
        raise TrainError(f"unknown device {name!r} (auto, cpu or cuda)")
    return torch.device("cpu")


def trained_sources(data_dir: Path, train: list[Sample]) -> list[dict]:
    """The catalogue sources a run learns from, with citation and licence: a CC BY source must be
    cited wherever the model is shared, so checkpoints, bundles and packages carry the list."""
    if not is_catalogue(data_dir):
        return []
    used = {source_of(s) for s in train}
    return [{"name": sp.name, "licence": sp.licence, "citation": sp.citation}
            for sp in load_catalogue(data_dir).sources if sp.name in used]


def mixed_precision(cfg: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """What `optim.amp` means on this device: fp16 autocast on a GPU, bf16 autocast on a CPU that
    computes bf16 natively (AMX, AVX-512 BF16), and plain fp32 on any other CPU, where emulated bf16
    would be many times slower."""
    if not cfg.optim.amp:
        return False, torch.float32
    if device.type == "cuda":
        return True, torch.float16
    if device.type == "cpu" and cpu_bf16_native():
        return True, torch.bfloat16
    return False, torch.float32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.optim.epochs * steps_per_epoch)
    warm = cfg.optim.warmup_epochs * steps_per_epoch

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.optim.schedule == "constant":
            return 1.0
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))

    return f


def resolve_init(init: str | Path | None, kind: str) -> Path | None:
    """`--init`: a checkpoint path, or "default" for the checkpoint shipped with nseg-train."""
    if init is None or str(init) != DEFAULT_INIT:
        return None if init is None else Path(init)
    path = default_checkpoint_path(kind)
    if not path.is_file():
        raise TrainError(f"--init default: no default {kind} checkpoint is shipped ({path} does not exist); "
                         f"train from scratch (leave out --init) or pass --init CKPT")
    return path


def _checked(res: LoadResult, what: str) -> list[Sample]:
    if res.errors:
        listing = "\n  ".join(str(e) for e in res.errors[:20])
        raise TrainError(f"{len(res.errors)} sample(s) of {what} could not be read:\n  {listing}")
    return res.samples


def resolve_splits(opts: RunOptions) -> tuple[Splits, Path, dict[str, Sample]]:
    """(splits, the file they come from or will be saved to, samples already decoded on the way)."""
    if opts.splits_file is not None:
        return load_splits(opts.splits_file), Path(opts.splits_file), {}
    kept = Path(opts.out_dir) / SPLITS_FILE
    if opts.resume and kept.is_file():
        return load_splits(kept), kept, {}
    # A new split needs every image's modality, so the whole dataset is decoded once here.
    samples = _checked(open_dataset(opts.data_dir, cache_dir=opts.cache_dir), str(opts.data_dir))
    try:
        splits = training_splits({s.id: str(s.modality) for s in samples})
    except ValueError as e:
        raise TrainError(f"{opts.data_dir}: {e}") from e
    return splits, kept, {s.id: s for s in samples}


def load_split_samples(opts: RunOptions, names: tuple[str, ...], limits: dict[str, int | None],
                       modalities: tuple[str, ...] | None = None):
    splits, source, decoded = resolve_splits(opts)
    out = {}
    for name in names:
        ids = list(splits[name])
        if name in ("train", "val") and modalities:
            ids = [i for i in ids if splits.modality.get(i) in modalities]
        if limits.get(name):
            ids = ids[: limits[name]]
        if not ids:
            raise TrainError(f"{source}: split '{name}' is empty")
        if decoded:  # the whole dataset, decoded to make the split
            out[name] = [decoded[i] for i in ids]
        else:
            res = open_dataset(opts.data_dir, cache_dir=opts.cache_dir, ids=ids)
            out[name] = _checked(res, f"split '{name}'")
    return splits, out


LOG_FIELDS = ["epoch", "step", "lr", "train_loss", "seconds", "val_dsb", "val_f1_50", "val_f1_75", "val_aji", "val_pq", "val_dice",
              "val_dsb_raw"]


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        # Per-source columns (source_columns) follow the fixed ones, in the order they first appear.
        extra = [k for r in rows for k in r if k not in LOG_FIELDS]
        w = csv.DictWriter(f, fieldnames=[*LOG_FIELDS, *dict.fromkeys(extra)], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _load_init(path: Path, cfg: TrainConfig, splits) -> dict:
    """Weights to start from, refused when they do not fit or would leak the locked split."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: --init checkpoint not found")
    ckpt = load_checkpoint(path)
    # Deep supervision adds training-only heads to the same network, so it may differ.
    want = json.dumps({**cfg.to_dict()["model"], "deep_supervision": 0}, sort_keys=True, default=list)
    have = json.dumps({**((ckpt.get("config") or {}).get("model") or {}), "deep_supervision": 0}, sort_keys=True, default=list)
    if ckpt.get("kind") != cfg.model.kind or want != have:
        raise TrainError(f"{path}: its model ({have}) differs from the config's ({want}); --init needs the same architecture")
    # A model that saw this split's locked images in training or validation would make locked scores meaningless.
    seen = set()
    for name in ("train", "val"):
        seen.update((ckpt.get("splits") or {}).get("splits", {}).get(name, []))
    leaked = sorted(seen & set(splits["locked"]))
    if leaked:
        raise TrainError(f"{path}: was trained or validated on {len(leaked)} images of this split's locked set "
                         f"(e.g. {leaked[0]}); starting from it would leak the test set")
    return {"path": str(path), "weights_sha256": _weights_sha256(ckpt["model"]), "splits_sha256": ckpt.get("splits_sha256"),
            "train_seconds": float(ckpt.get("train_seconds") or 0.0),
            "epochs": int(ckpt.get("epoch", -1)) + 1 + init_epochs(ckpt), "model": ckpt["model"]}


def train(cfg: TrainConfig, opts: RunOptions) -> dict:
    info = init_distributed("cuda" if opts.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    try:
        return _train(cfg, opts, info)
    finally:
        cleanup(info)


def _train(cfg: TrainConfig, opts: RunOptions, info: DistInfo) -> dict:
    device = pick_device(opts.device, info)
    if opts.epochs is not None:
        cfg = cfg.replace(optim=dataclasses.replace(cfg.optim, epochs=opts.epochs))
    out = Path(opts.out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if not opts.resume and info.is_main and last_path.exists():
        raise TrainError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    init_path = resolve_init(opts.init, cfg.model.kind)
    seed_everything(cfg.seed + info.rank)
    splits, data = load_split_samples(opts, ("train", "val"), {"train": opts.limit_train, "val": opts.limit_val},
                                      cfg.data.modalities)
    if cfg.eval.max_val_images:
        data["val"] = data["val"][: cfg.eval.max_val_images]

    data_sources = trained_sources(opts.data_dir, data["train"])
    task = TASKS[cfg.model.kind](cfg)
    dataset = task.train_dataset(data["train"], seed=cfg.seed)
    sampler = torch.utils.data.DistributedSampler(dataset, shuffle=False) if info.enabled else None
    workers = cfg.data.num_workers if opts.workers is None else opts.workers
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        collate_fn=task.collate,
        drop_last=len(dataset) // max(1, info.world_size) >= cfg.optim.batch_size,
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = max(1, len(loader))

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = task.build_model().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optim.optimizer == "sgd":
        # detectron2's SOLVER.MOMENTUM default, which the seed study's Mask R-CNN kept.
        optimizer = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=0.9, weight_decay=cfg.optim.weight_decay)
    else:
        opt_cls = torch.optim.AdamW if cfg.optim.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch))
    amp, amp_dtype = mixed_precision(cfg, device)
    # bf16 keeps fp32's exponent range: only fp16 on a GPU needs loss scaling.
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)

    start_epoch, step, best = 0, 0, -1.0
    history: list[dict] = []
    init = _load_init(init_path, cfg, splits) if init_path is not None else None
    if init is not None:
        load_weights(model, init["model"])
    ema = None
    if cfg.optim.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema), use_buffers=True)
    if opts.resume:
        if not last_path.exists():
            raise TrainError(f"{last_path}: --resume given but there is no checkpoint to resume from")
        ckpt = load_checkpoint(last_path)
        if ckpt["splits_sha256"] != splits.sha256():
            raise TrainError(f"{last_path}: checkpoint was trained on another split (sha256 differs)")
        saved = dict(ckpt["config"])
        now = cfg.to_dict()
        saved["optim"] = {**saved["optim"], "epochs": now["optim"]["epochs"]}
        if json.dumps(saved, sort_keys=True, default=list) != json.dumps(now, sort_keys=True, default=list):
            raise TrainError(f"{last_path}: config differs from the checkpoint's; resume needs the same config")
        # With weight averaging, "model" holds the averaged weights and "train_model" the raw ones.
        model.load_state_dict(ckpt.get("train_model") or ckpt["model"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["model"])
            ema.n_averaged.fill_(ckpt["ema_n_averaged"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step, best = ckpt["epoch"] + 1, ckpt["step"], ckpt.get("best_dsb", -1.0)
        history = [r for r in _read_log(out / "log.csv") if int(r["epoch"]) < start_epoch]

    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if info.enabled else model
    writer = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
        save_splits(splits, out / SPLITS_FILE)
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"), purge_step=step if opts.resume else None)
        except ImportError:
            print("tensorboard not installed: TensorBoard logs skipped (CSV log and curves still written)", file=sys.stderr)
        print(
            f"[nseg-train] {cfg.name}: {len(data['train'])} train / {len(data['val'])} val images, "
            f"{steps_per_epoch} steps/epoch x {cfg.optim.epochs} epochs on {device} "
            f"({str(amp_dtype).removeprefix('torch.') if amp else 'float32'})"
            + (f" x {info.world_size} ranks" if info.enabled else "")
            + (f", resuming at epoch {start_epoch}" if start_epoch else ""),
            flush=True,
        )

    use_bar = opts.progress and info.is_main
    end_epoch = cfg.optim.epochs if opts.stop_after is None else min(cfg.optim.epochs, start_epoch + opts.stop_after)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        ddp_model.train()
        losses = []
        skipped, max_skips = 0, max(2, steps_per_epoch // 100)
        batches = loader
        if use_bar:
            from tqdm import tqdm

            batches = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", leave=False, mininterval=1 if sys.stderr.isatty() else 30)
        for batch in batches:
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
                loss, parts = task.loss(ddp_model, batch, device)
            if not torch.isfinite(loss):
                # One batch that overflows (a bf16 Mask R-CNN box loss can) would end hours of
                # training; it is skipped, as fp16's GradScaler skips an overflowing step, but said
                # aloud and never often. DDP ranks must step together, so there it stops the run.
                skipped += 1
                bad = float(loss.detach())
                if info.enabled or skipped > max_skips:
                    raise TrainError(f"loss became {bad} at epoch {epoch + 1}, step {step}"
                                     f"{f' ({skipped} batches skipped this epoch)' if skipped > 1 else ''}; lower optim.lr")
                print(f"[nseg-train] epoch {epoch + 1}, step {step}: loss {bad}, batch skipped "
                      f"({skipped} of at most {max_skips} this epoch)", file=sys.stderr, flush=True)
                continue
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            losses.append(float(loss.detach()))
            if writer is not None and step % 10 == 0:
                writer.add_scalar("train/loss", losses[-1], step)
                for k, v in parts.items():
                    writer.add_scalar(f"train/{k}", v, step)
        row = {"epoch": epoch, "step": step, "lr": scheduler.get_last_lr()[0], "train_loss": float(np.mean(losses)) if losses else float("nan")}
        validate = (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.optim.epochs
        barrier(info)
        if info.is_main:
            if validate:
                if ema is not None:
                    raw, _ = evaluate_samples(model, data["val"], cfg, device, predict=task.predict)
                    row["val_dsb_raw"] = raw.overall["dsb"]
                scored = ema.module if ema is not None else model
                result, _ = evaluate_samples(scored, data["val"], cfg, device, predict=task.predict)
                ov = result.overall
                row.update({f"val_{k}": ov[k] for k in ("dsb", "f1_50", "f1_75", "aji", "pq", "dice")})
                row.update(source_columns(result))
                if writer is not None:
                    for k in ("dsb", "f1_50", "f1_75", "aji", "pq", "dice"):
                        writer.add_scalar(f"val/{k}", ov[k], step)
                write_text_atomic(out / "val" / "latest.md", markdown_table(result, f"validation, epoch {epoch + 1}"))
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            _write_log(out / "log.csv", history)
            plot_curves(history, out / "curves.png", title=cfg.name)
            is_best = validate and selection_score(row) > best
            if is_best:
                best = selection_score(row)
            ckpt = {
                "format": FORMAT,
                "kind": cfg.model.kind,
                "config": json.loads(json.dumps(cfg.to_dict())),
                "model": (ema.module if ema is not None else model).state_dict(),
                **({"train_model": model.state_dict(), "ema_n_averaged": int(ema.n_averaged)} if ema is not None else {}),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "precision": str(amp_dtype).removeprefix("torch.") if amp else "float32",
                "epoch": epoch,
                "step": step,
                "best_dsb": best,
                "splits": splits.to_json(),
                "splits_sha256": splits.sha256(),
                "metrics": {k: v for k, v in row.items() if k.startswith("val_")},
                # Including the run it started from: the compute that made these weights.
                "train_seconds": sum(float(r.get("seconds") or 0) for r in history) + (init["train_seconds"] if init else 0.0),
                "init": {k: v for k, v in init.items() if k != "model"} if init else None,
                **({"data_sources": data_sources} if data_sources else {}),
                "versions": versions(),
                "machine": describe(str(device)),
            }
            save_atomic(ckpt, last_path)
            if is_best:
                save_atomic(ckpt, best_path)
            msg = f"epoch {epoch + 1}/{cfg.optim.epochs} loss {row['train_loss']:.4f} lr {row['lr']:.2e} {row['seconds']:.0f}s"
            if validate:
                msg += f" | val DSB {row['val_dsb']:.3f} F1@0.5 {row['val_f1_50']:.3f} AJI {row['val_aji']:.3f}" + (" *best*" if is_best else "")
            print(msg, flush=True)
        barrier(info)
    if writer is not None:
        writer.close()
    return {
        "epochs": cfg.optim.epochs,
        "steps": step,
        "best_val_dsb": broadcast_object(info, best),
        "out": str(out),
        "rank": info.rank,
        "world_size": info.world_size,
        "weights_sha256": parameters_sha256(model),
    }


def source_columns(result) -> dict[str, float]:
    """With several sources, each source's validation DSB and F1@0.5, and their mean, which
    chooses best.pt: a small source counts as much as DSB's many images."""
    per = result.per_source()
    if len(per) < 2:
        return {}
    cols = {}
    for src, m in per.items():
        cols[f"val_dsb_{src}"] = m["dsb"]
        cols[f"val_f1_50_{src}"] = m["f1_50"]
    cols["val_dsb_source_mean"] = float(np.mean([m["dsb"] for m in per.values()]))
    return cols


def selection_score(row: dict) -> float:
    return row.get("val_dsb_source_mean", row["val_dsb"])


def _weights_sha256(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def parameters_sha256(model: torch.nn.Module) -> str:
    """Hash of the learnable weights: equal on every DDP rank after a correct run."""
    return _weights_sha256(dict(model.named_parameters()))
