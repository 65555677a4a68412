"""Bundle metadata.json (contract in docs/architecture.md): built from a checkpoint, written atomically.

Everything the runtime needs to reproduce training's view of an image lives here, so the
runtime never has to see the training config's Python types.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from nseg_data.atomic import write_text_atomic
from nseg_infer.engine.bundle import FORMAT, sha256_file

METADATA = "metadata.json"
# Keys this exporter always writes; the runtime's reader requires a subset of them.
REQUIRED_KEYS = (
    "format", "kind", "model_file", "sha256", "inputs", "outputs", "preprocessing", "tiling",
    "postprocessing", "training", "metrics", "versions", "engines",
)


class MetadataError(ValueError):
    pass


def nseg_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nseg-export")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "0+unknown"


def versions(opset: int) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": int(opset),
        "nseg": nseg_version(),
        "python": platform.python_version(),
    }


def _jsonable(obj: Any) -> Any:
    # Checkpoint configs and metrics may hold tuples / numpy scalars; JSON must round-trip them.
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def training_section(ckpt: dict[str, Any]) -> dict[str, Any]:
    return {
        "config": _jsonable(ckpt.get("config", {})),
        "splits_sha256": ckpt.get("splits_sha256"),
        "epoch": ckpt.get("epoch"),
        "step": ckpt.get("step"),
        "checkpoint_versions": _jsonable(ckpt.get("versions", {})),
        # The data sets a multi-source model learnt from, with their licences and citations.
        **({"data_sources": _jsonable(ckpt["data_sources"])} if ckpt.get("data_sources") else {}),
    }


def build_metadata(
    *,
    kind: str,
    ckpt: dict[str, Any],
    model_path: Path,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    preprocessing: dict[str, Any],
    tiling: dict[str, Any],
    postprocessing: dict[str, Any],
    opset: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format": FORMAT,
        "kind": kind,
        "model_file": model_path.name,
        "sha256": sha256_file(model_path),
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": preprocessing,
        "tiling": tiling,
        "postprocessing": postprocessing,
        "training": training_section(ckpt),
        "metrics": _jsonable(ckpt.get("metrics", {})),
        "versions": versions(opset),
        "engines": [],
    }
    if extra:
        meta.update(_jsonable(extra))
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:  # pragma: no cover - guards future edits of this function
        raise MetadataError(f"metadata is missing {missing}")
    return meta


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Indented JSON, written atomically: a reader never sees half a metadata.json."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_metadata(bundle_dir: Path) -> dict[str, Any]:
    p = Path(bundle_dir) / METADATA
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise MetadataError(f"{p}: missing (not a bundle folder?)") from e
    except json.JSONDecodeError as e:
        raise MetadataError(f"{p}: not valid JSON: {e}") from e
