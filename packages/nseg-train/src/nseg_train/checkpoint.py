"""Checkpoint format (see docs/architecture.md) and loading a model back from it."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from nseg_data.atomic import atomic_path

from nseg_train.config import TrainConfig, config_from_dict
from nseg_train.models import build_model_for

FORMAT = "nseg-checkpoint/1"


def versions() -> dict[str, str]:
    import monai
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
    }


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write next to the target, then rename: a run killed mid-save keeps the previous checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not an nseg checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    return ckpt


def load_model(path: Path) -> tuple[torch.nn.Module, TrainConfig, dict[str, Any]]:
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"], where=f"{path}: config")
    model = build_model_for(cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, cfg, ckpt


def init_epochs(ckpt: dict, _seen: frozenset[str] = frozenset()) -> int:
    """Epochs behind the weights a run started from (`--init`): the count recorded when the run
    began; for checkpoints without one, the chain of starting checkpoints followed back while
    their files exist. A file may since have been replaced by its own descendant (the shipped
    default is), so the recorded count wins and a path seen twice ends the chain."""
    init = ckpt.get("init") or {}
    if "epochs" in init:
        return int(init["epochs"])
    path = Path(init["path"]).resolve() if init.get("path") else None
    if path is None or not path.is_file() or str(path) in _seen:
        return 0
    prev = load_checkpoint(path)
    return int(prev.get("epoch", -1)) + 1 + init_epochs(prev, _seen | {str(path)})
