"""nseg-train: UNet (MONAI) and Mask R-CNN (torchvision) training, evaluation and comparison."""

from __future__ import annotations

from pathlib import Path


def default_checkpoint_path() -> Path:
    """The tuned, weights-only checkpoint the runtime's default bundle was exported from."""
    return Path(__file__).resolve().parent / "assets" / "unet-default.pt"
