"""nseg-train: UNet (MONAI) and Mask R-CNN (torchvision) training, evaluation and comparison."""

from __future__ import annotations

from pathlib import Path

# The checkpoint shipped for each model kind (`--init default`); a kind without one has no file yet.
_DEFAULT_CHECKPOINTS = {"unet": "unet-default.pt", "maskrcnn": "maskrcnn-default.pt"}


def default_checkpoint_path(kind: str = "unet") -> Path:
    """The shipped checkpoint of `kind`: for UNet the tuned, weights-only checkpoint the runtime's
    default bundle was exported from. The path is returned whether or not the file exists."""
    if kind not in _DEFAULT_CHECKPOINTS:
        raise ValueError(f"unknown model kind {kind!r}, expected one of {', '.join(_DEFAULT_CHECKPOINTS)}")
    return Path(__file__).resolve().parent / "assets" / _DEFAULT_CHECKPOINTS[kind]
