"""nseg-train: thin commands; heavy modules are imported inside each command."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Train and evaluate nseg models.")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _train(kind: str, config: str, data: Path, splits: Path | None, out: Path, resume: bool, device: str, epochs, cache, limit_train, limit_val, workers, progress, stop_after=None, backbone_weights=None, init=None) -> None:
    from nseg_data.errors import DataError

    from nseg_train.config import ConfigError, load_config
    from nseg_train.engine import RunOptions, TrainError, train

    try:
        cfg = load_config(config)
        if cfg.model.kind != kind:
            _fail(f"{config}: model.kind is {cfg.model.kind!r}, use `nseg-train {cfg.model.kind}`")
        if backbone_weights is not None:
            import dataclasses

            cfg = cfg.replace(maskrcnn=dataclasses.replace(cfg.maskrcnn, backbone_weights=str(backbone_weights)))
        opts = RunOptions(
            data_dir=data, splits_file=splits, out_dir=out, cache_dir=cache, resume=resume, device=device,
            epochs=epochs, limit_train=limit_train, limit_val=limit_val, workers=workers, progress=progress,
            stop_after=stop_after, init=init,
        )
        summary = train(cfg, opts)
    except (ConfigError, TrainError, DataError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"done: best validation DSB {summary['best_val_dsb']:.3f}, checkpoints in {summary['out']}")


_CONFIG = typer.Option(..., "--config", help="YAML file or preset name (unet, unet-finetune, unet-long, unet-multi, unet-paper, maskrcnn, maskrcnn-multi, maskrcnn-paper)")
_DATA = typer.Option(..., "--data", help="dataset in any form nseg-data reads: a folder of NAME.png + NAME.labels.tif "
                     "(or Cellpose NAME_masks.png), the Kaggle stage1_train folder or zip, a run-length CSV")
_TRAIN_SPLITS = typer.Option(None, "--splits", help="splits JSON written by `nseg-data split`; default: a new split of "
                             "--data (no locked set below 20 images), kept as OUT/splits.json and reused by --resume")
_OUT = typer.Option(..., "--out", help="run directory (checkpoints, logs, curves)")
_CACHE = typer.Option(None, "--cache", help="decoded-sample cache directory (recommended)")
_INIT = typer.Option(None, "--init", help="start from this checkpoint's weights (same architecture; fresh optimizer and "
                     "schedule); 'default' is the checkpoint shipped with nseg-train, e.g. to adapt the default model "
                     "to your own images with --config unet-finetune")


@app.command()
def unet(
    config: str = _CONFIG,
    data: Path = _DATA,
    splits: Path = _TRAIN_SPLITS,
    out: Path = _OUT,
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/last.pt"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    epochs: int = typer.Option(None, "--epochs", help="override optim.epochs"),
    cache: Path = _CACHE,
    limit_train: int = typer.Option(None, "--limit-train", help="use only the first N training images"),
    limit_val: int = typer.Option(None, "--limit-val", help="use only the first N validation images"),
    workers: int = typer.Option(None, "--workers", help="data loader workers (default from config)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    stop_after: int = typer.Option(None, "--stop-after", help="run at most N epochs now, then stop (continue with --resume)"),
    init: str = _INIT,
) -> None:
    """Train a MONAI UNet (presets: unet, unet-finetune, unet-paper). Run under torchrun for multi-GPU / multi-node."""
    _train("unet", config, data, splits, out, resume, device, epochs, cache, limit_train, limit_val, workers, progress, stop_after, init=init)


@app.command()
def maskrcnn(
    config: str = _CONFIG,
    data: Path = _DATA,
    splits: Path = _TRAIN_SPLITS,
    out: Path = _OUT,
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/last.pt"),
    backbone_weights: Path = typer.Option(
        None, "--backbone-weights", help="local state_dict of the backbone's classification network (e.g. ImageNet ResNet-50); default: from scratch"
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    epochs: int = typer.Option(None, "--epochs", help="override optim.epochs"),
    cache: Path = _CACHE,
    limit_train: int = typer.Option(None, "--limit-train", help="use only the first N training images"),
    limit_val: int = typer.Option(None, "--limit-val", help="use only the first N validation images"),
    workers: int = typer.Option(None, "--workers", help="data loader workers (default from config)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    stop_after: int = typer.Option(None, "--stop-after", help="run at most N epochs now, then stop (continue with --resume)"),
    init: str = _INIT,
) -> None:
    """Train a torchvision Mask R-CNN (presets: maskrcnn, maskrcnn-paper). Run under torchrun for multi-GPU / multi-node."""
    _train("maskrcnn", config, data, splits, out, resume, device, epochs, cache, limit_train, limit_val, workers, progress, stop_after, backbone_weights, init)


@app.command()
def adapt(
    data: Path = typer.Argument(..., help="a folder of NAME.png + NAME.labels.tif (or Cellpose NAME_masks.png): the lab's annotated images"),
    out: Path = typer.Option(..., "--out", help="folder for model.pt (the kept model), adapt.json and splits.json"),
    steps: int = typer.Option(2400, "--steps", help="optimizer steps of the fine-tune"),
    minutes: float = typer.Option(12.0, "--minutes", help="time budget of the training steps (0: none, run all --steps)"),
    batch: int = typer.Option(4, "--batch", help="crops per step"),
    lr: float = typer.Option(1e-3, "--lr", help="peak learning rate"),
    replay: float = typer.Option(0.25, "--replay", help="fraction of crops from the shipped replay set (0: none)"),
    min_gain: float = typer.Option(0.02, "--min-gain", help="held-out DSB by which the fine-tune must beat the default to be kept"),
    init: str = typer.Option("default", "--init", help="the UNet checkpoint to adapt ('default': the shipped one)"),
    seed: int = typer.Option(0, "--seed", help="seed of the held-out draw, the crops and the augmentations"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
) -> None:
    """Adapt the default UNet to a few annotated images: a fine-tune sized in steps and minutes,
    augmentations for the lab's modality, replay of the default's own training images, thresholds
    re-tuned on held-out images when there are enough, and a stop-loss: the fine-tune is kept only
    if it beats the default on the held-out images by --min-gain DSB. Export OUT/model.pt with `nseg-export onnx`."""
    from nseg_train.adapt import AdaptConfig, AdaptError
    from nseg_train.adapt import adapt as run_adapt
    from nseg_train.config import ConfigError

    shown = {"step": 0, "seconds": 0.0}

    def progress(p) -> None:
        # A line at the first step, every 2 % and at least every 15 s: the napari widget's progress bar reads them.
        if p.phase == "load":
            typer.echo("preparing the images and the replay set...", err=True)
        elif p.phase == "train" and (p.step == 1 or p.step - shown["step"] >= max(1, p.total // 50)
                                     or p.seconds - shown["seconds"] >= 15 or p.step == p.total):
            shown.update(step=p.step, seconds=p.seconds)
            left = p.seconds / p.step * (p.total - p.step)
            typer.echo(f"step {p.step}/{p.total} loss {p.loss:.4f} ({p.seconds / p.step:.2f} s/step, "
                       f"{left / 60:.1f} min left)", err=True)
        elif p.phase == "judge":
            typer.echo(f"trained {p.step} steps in {p.seconds / 60:.1f} min; judging on the held-out images...", err=True)

    try:
        ac = AdaptConfig(steps=steps, minutes=minutes or None, batch=batch, lr=lr, replay=replay, min_gain=min_gain,
                         init=init, seed=seed, device=device)
        r = run_adapt(data, out, ac, progress=progress)
    except (ConfigError, AdaptError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(r.message)
    typer.echo(f"wrote {r.model_path} ({r.kept}) and {out / 'adapt.json'}; make a bundle with: "
               f"nseg-export onnx {r.model_path} --out BUNDLE")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="run directories (or checkpoints); each run's best.pt is evaluated"),
    split: str = typer.Option("locked", "--split", help="the split every run is scored on"),
    data: Path = _DATA,
    out: Path = typer.Option(..., "--out", help="folder for comparison.md/.json, comparison.png and curves.png"),
    splits: Path = typer.Option(None, "--splits", help="splits JSON (default: the one stored in the first run)"),
    cache: Path = _CACHE,
    device: str = typer.Option("auto", "--device"),
    gallery_images: int = typer.Option(4, "--gallery", help="images in the comparison figure"),
    limit: int = typer.Option(None, "--limit", help="use only the first N images of the split"),
) -> None:
    """Score finished runs on one split: instance metrics, size, training and inference time, figures."""
    from tqdm import tqdm

    from nseg_train.compare import CompareError, compare_runs

    try:
        compare_runs(
            runs, split=split, data=data, splits=splits, out=out, cache=cache, device=device,
            gallery_images=gallery_images, limit=limit, progress=lambda x, desc: tqdm(x, desc=desc),
        )
    except (CompareError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo((out / "comparison.md").read_text())
    typer.echo(f"written: {out / 'comparison.md'}, {out / 'comparison.png'}, {out / 'curves.png'}")


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="a checkpoint, e.g. RUN_DIR/best.pt"),
    split: str = typer.Option("locked", "--split", help="locked, val, train or all"),
    data: Path = _DATA,
    splits: Path = typer.Option(None, "--splits", help="splits JSON (default: the one stored in the checkpoint)"),
    out: Path = typer.Option(None, "--out", help="report directory (default: next to the checkpoint, eval-SPLIT)"),
    cache: Path = _CACHE,
    device: str = typer.Option("auto", "--device"),
    gallery_images: int = typer.Option(6, "--gallery", help="images in the overlay gallery"),
) -> None:
    """Metrics overall and per modality (JSON + Markdown) and an overlay gallery PNG."""
    from nseg_train.report import EvalError, evaluate_checkpoint

    out = out or checkpoint.parent / f"eval-{split}"
    try:
        result = evaluate_checkpoint(checkpoint, split=split, data=data, splits=splits, out=out, cache=cache, device=device, gallery_images=gallery_images)
    except (EvalError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo((out / "metrics.md").read_text())
    typer.echo(f"DSB {result.overall['dsb']:.3f} on {len(result.rows)} '{split}' images; report in {out}")


@app.command()
def tune(
    checkpoint: Path = typer.Argument(..., help="a UNet or Mask R-CNN checkpoint, e.g. RUN_DIR/best.pt"),
    data: Path = _DATA,
    out: Path = typer.Option(..., "--out", help="where to write the tuned, weights-only checkpoint"),
    splits: Path = typer.Option(None, "--splits", help="splits JSON (default: the one stored in the checkpoint)"),
    split: str = typer.Option("val", "--split", help="never 'locked'"),
    cache: Path = _CACHE,
    limit: int = typer.Option(None, "--limit", help="use only the first N images of the split"),
    max_drop: float = typer.Option(0.005, "--max-drop", help="with several sources: the most DSB any source may "
                                   "lose against the checkpoint's own settings"),
    workers: int = typer.Option(None, "--workers", help="processes scoring the instance step (default: the cores)"),
) -> None:
    """Grid-search the post-processing thresholds on the validation split (UNet: watershed, then
    h-maxima seeds and per-modality parameters, each scored alone and together; Mask R-CNN: score,
    mask, NMS and size) through the runtime's pipeline; write the best into a new checkpoint.
    With several sources (a sources catalogue) the search maximises the mean of the sources' DSB
    and no source may lose more than --max-drop."""
    from tqdm import tqdm

    from nseg_train.tune import tune_checkpoint

    try:
        r = tune_checkpoint(checkpoint, data=data, splits=splits, out=out, cache=cache, split=split, limit=limit,
                            progress=lambda x, desc: tqdm(x, desc=desc), max_drop=max_drop, workers=workers)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if r.ablation is not None:
        a = r.ablation
        typer.echo(f"val DSB: global thresholds {a.global_thresholds:.4f}, h-maxima seeds {a.h_maxima:.4f}, "
                   f"per-modality {a.by_modality:.4f}, both {a.combined:.4f} (images per modality {a.modality_counts})")
    if r.per_source:
        typer.echo("val DSB per source: " + ", ".join(
            f"{k} {r.per_source['own settings'][k]:.4f} -> {v:.4f}" for k, v in r.per_source["tuned"].items()))
    typer.echo(f"val DSB {r.baseline_dsb:.4f} -> {r.best_dsb:.4f} with {r.best}; wrote {out}")


if __name__ == "__main__":
    app()
