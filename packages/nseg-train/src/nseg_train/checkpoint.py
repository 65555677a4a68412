"""Checkpoint format (see docs/architecture.md) and loading a model back from it.

Checkpoints travel between labs (`--init`, `tune`, `evaluate`, `compare`, export), and a pickle can
name any Python callable to run while it loads. So every checkpoint is read with
`torch.load(weights_only=True)`: tensors and plain data (dict, list, tuple, str, numbers) only,
plus the classes in `SAFE_GLOBALS`. Anything else is refused, naming the file and what it asked for.
"""

from __future__ import annotations

import pickle
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

    # Plain strings: torch.__version__ is a TorchVersion object, which a weights-only load would
    # have to allow-list.
    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "monai": str(monai.__version__),
        "python": platform.python_version(),
    }


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write next to the target, then rename: a run killed mid-save keeps the previous checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# Checkpoints written before `versions()` stored plain strings hold torch.__version__ as a
# TorchVersion (a str subclass with comparison methods, nothing that runs on load): the shipped
# defaults do. Nothing else is allowed.
SAFE_GLOBALS = (torch.torch_version.TorchVersion,)


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle asks for code beyond tensors and plain data."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint does not exist")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = _unsafe_globals(path)
        if names or "GLOBAL" in str(exc) or "global" in str(exc):
            raise UnsafeCheckpointError(
                f"{path}: refused: its pickle asks for {names or 'objects other than tensors and plain data'}, "
                "which an nseg checkpoint never holds; loading it could run code from the file (checkpoints "
                "are loaded weights-only: tensors and plain data)") from exc
        raise ValueError(f"{path}: not a readable checkpoint ({_reason(exc)})") from exc
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not an nseg checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    return ckpt


def _unsafe_globals(path: Path) -> str:
    """The callables/classes the pickle names beyond the allowed ones; only scans, runs nothing."""
    try:
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in allowed]
    except Exception:  # not a zip checkpoint (legacy format or junk): the unpickler's message stands
        names = []
    return ", ".join(names)


def _reason(exc: Exception) -> str:
    # torch's message is a page of advice about weights_only=False, which is exactly what must
    # not be done with a file from elsewhere; keep the unpickler's own line.
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error" in ln:
            rest = ln.split("WeightsUnpickler error:", 1)[1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else ln)
    return lines[0] if lines else type(exc).__name__


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
