"""PNG figures: training curves and image / truth / prediction galleries."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from nseg_data.atomic import atomic_path
from skimage.segmentation import find_boundaries


def label_overlay(image: np.ndarray, labels: np.ndarray, colour=(255, 255, 0)) -> np.ndarray:
    out = image.copy()
    out[find_boundaries(labels, mode="inner")] = colour
    return out


def random_colours(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lut = rng.integers(60, 255, size=(int(labels.max()) + 1, 3), dtype=np.uint8)
    lut[0] = 0
    return lut[labels]


def gallery(rows: list[tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray]]], path: Path, title: str = "") -> None:
    """rows: (caption, image, truth, {model name: prediction}). Columns: image, truth, each model."""
    if not rows:
        return
    n_models = len(rows[0][3])
    cols = 2 + n_models
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 3.2 * len(rows)), squeeze=False)
    for r, (caption, image, truth, preds) in enumerate(rows):
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(caption, fontsize=8)
        axes[r, 1].imshow(random_colours(truth))
        axes[r, 1].set_title(f"truth ({int(len(np.unique(truth)) - 1)})", fontsize=8)
        for c, (name, pred) in enumerate(preds.items(), start=2):
            axes[r, c].imshow(label_overlay(image, pred))
            axes[r, c].set_title(f"{name} ({int(len(np.unique(pred)) - 1)})", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """history rows from log.csv: epoch, train_loss and val_* columns (blank when not validated)."""
    if not history:
        return
    ep = [int(h["epoch"]) for h in history]
    loss = [float(h["train_loss"]) for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(ep, loss, label="train loss")
    a1.set_xlabel("epoch")
    a1.set_title("loss")
    a1.legend()
    for key, name in (("val_dsb", "val DSB"), ("val_f1_50", "val F1@0.5"), ("val_aji", "val AJI")):
        pts = [(int(h["epoch"]), float(h[key])) for h in history if h.get(key) not in (None, "")]
        if pts:
            a2.plot(*zip(*pts, strict=True), marker="o", label=name)
    # A multi-source run's per-source DSB (engine.source_columns), dashed.
    for key in dict.fromkeys(k for h in history for k in h if k.startswith("val_dsb_") and k != "val_dsb_raw"):
        pts = [(int(h["epoch"]), float(h[key])) for h in history if h.get(key) not in (None, "")]
        if pts:
            a2.plot(*zip(*pts, strict=True), marker=".", linestyle="--", label=key.removeprefix("val_dsb_").replace("_", " ") + " DSB")
    a2.set_xlabel("epoch")
    a2.set_ylim(0, 1)
    a2.set_title("validation")
    if a2.lines:  # no validation yet in the first epochs
        a2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def plot_curves_side_by_side(runs: list[tuple[str, list[dict]]], path: Path, title: str = "") -> None:
    """One column per run (log.csv rows): training loss on top, validation metrics below, with a
    shared metric axis so the runs can be read against each other."""
    if not runs:
        return
    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 6.4), squeeze=False)
    for c, (name, history) in enumerate(runs):
        top, bottom = axes[0, c], axes[1, c]
        top.set_title(name, fontsize=9)
        if history:
            top.plot([int(h["epoch"]) + 1 for h in history], [float(h["train_loss"]) for h in history], label="train loss")
        top.set_xlabel("epoch")
        if top.lines:
            top.legend(fontsize=7)
        for key, label in (("val_dsb", "val DSB"), ("val_f1_50", "val F1@0.5"), ("val_aji", "val AJI")):
            pts = [(int(h["epoch"]) + 1, float(h[key])) for h in history if h.get(key) not in (None, "")]
            if pts:
                bottom.plot(*zip(*pts, strict=True), marker="o", label=label)
        bottom.set_xlabel("epoch")
        bottom.set_ylim(0, 1)
        if bottom.lines:
            bottom.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
