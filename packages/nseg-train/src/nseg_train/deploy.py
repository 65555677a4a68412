"""How a training config is deployed: the bundle sections derived from it, and a runtime
`Predictor` that drives a torch model.

nseg-export writes these sections into metadata.json; validation and evaluation run the runtime's
own tiling, blending and instance step through `runtime_predictor`, so a validation score is the
score `nseg-infer run` gets from the exported bundle.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from nseg_infer.bundle import Bundle, Preprocessing, TensorSpec, TilingSpec
from nseg_infer.preprocess import Normalization
from nseg_infer.run import Predictor, RunConfig

from nseg_train.config import TrainConfig


class NotDeployable(ValueError):
    """The config uses something the torch-free runtime does not implement."""


def runtime_compatible(cfg: TrainConfig) -> str | None:
    """None if the runtime can reproduce training's view of an image, else the reason it cannot."""
    d = cfg.data
    if d.normalization != "percentile":
        return f"data.normalization={d.normalization!r}: the runtime implements only 'percentile' normalisation"
    if d.resize:
        return f"data.resize={d.resize}: the runtime predicts at native resolution"
    if cfg.model.kind == "unet" and cfg.eval.instances != "watershed":
        return f"eval.instances={cfg.eval.instances!r}: the runtime's UNet instance step is the watershed"
    return None


def preprocessing_section(cfg: TrainConfig) -> dict[str, Any]:
    reason = runtime_compatible(cfg)
    if reason:
        raise NotDeployable(reason)
    d = cfg.data
    return {
        "channel_order": "RGB",
        "layout": "NCHW",
        "normalization": {"kind": "percentile", "low_percentile": float(d.low_percentile), "high_percentile": float(d.high_percentile)},
        "size_divisor": int(cfg.model.size_divisor),
    }


def unet_postprocessing_section(cfg: TrainConfig) -> dict[str, Any]:
    e = cfg.eval
    return {
        "kind": "unet_watershed",
        "fg_threshold": float(e.fg_threshold),
        "seed_threshold": float(e.seed_threshold),
        "min_seed_area": int(e.min_seed_area),
        "min_size": int(e.min_size),
    }


def tiling_section(cfg: TrainConfig, *, batch: int = 4) -> dict[str, int]:
    return {"tile": int(cfg.eval.tile), "halo": int(cfg.eval.halo), "batch": int(batch)}


class TorchBackend:
    """The runtime's Backend protocol over a torch UNet: NCHW float32 in, {'probs': sigmoid} out."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, *, amp: bool = False) -> None:
        self.model = model.eval()
        self.device = device
        self.amp = amp and device.type == "cuda"

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        with torch.autocast(device_type=self.device.type, enabled=self.amp):
            y = self.model(x)
        return {"probs": torch.sigmoid(y.float()).cpu().numpy()}


def in_memory_bundle(cfg: TrainConfig) -> Bundle:
    """A Bundle describing `cfg` without any model file: the torch backend stands in for the graph."""
    pre = preprocessing_section(cfg)
    nd = pre["normalization"]
    return Bundle(
        path=Path("<in-memory>"),
        kind="unet",
        model_path=Path("<torch>"),
        sha256="",
        inputs=(TensorSpec("image", "float32", ("batch", 3, "height", "width")),),
        outputs=(TensorSpec("probs", "float32", ("batch", 2, "height", "width"), ("foreground", "distance")),),
        preprocessing=Preprocessing(
            normalization=Normalization(nd["low_percentile"], nd["high_percentile"]), size_divisor=pre["size_divisor"]
        ),
        tiling=TilingSpec(**tiling_section(cfg)),
        postprocessing=MappingProxyType(unet_postprocessing_section(cfg)),
    )


def runtime_predictor(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> Predictor:
    backend = TorchBackend(model, device, amp=cfg.optim.amp)
    return Predictor(in_memory_bundle(cfg), RunConfig(device="cpu"), backend=backend)
