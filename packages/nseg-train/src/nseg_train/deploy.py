"""How a training config is deployed: the bundle sections derived from it, and a runtime
`Predictor` that drives a torch model.

nseg-export writes these sections into metadata.json; validation, tuning, evaluation and
comparison run the runtime's own normalisation, resizing, tiling, blending and instance step
through `runtime_predictor`, for every config (the seed's `unet-paper` setup included), so a
validation score is the score `nseg-infer run` gets from the exported bundle.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from nseg_infer.engine.bundle import Bundle, Preprocessing, ScaleSpec, TensorSpec, TilingSpec
from nseg_infer.engine.predictor import Predictor, RunConfig
from nseg_infer.engine.preprocess import Normalization

from nseg_train.config import TrainConfig


def size_divisor(cfg: TrainConfig) -> int:
    # torchvision's detection transform pads to multiples of 32.
    return 32 if cfg.model.kind == "maskrcnn" else int(cfg.model.size_divisor)


def preprocessing_section(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.data
    # `resize`: training resized every image (normalised, bilinear) to resize x resize.
    return {
        "channel_order": "RGB",
        "layout": "NCHW",
        "normalization": {"kind": d.normalization, "low_percentile": float(d.low_percentile), "high_percentile": float(d.high_percentile)},
        "size_divisor": size_divisor(cfg),
        **({"resize": int(d.resize)} if d.resize else {}),
    }


def unet_postprocessing_section(cfg: TrainConfig) -> dict[str, Any]:
    e = cfg.eval
    if e.instances == "components":
        return {"kind": "components", "fg_threshold": float(e.fg_threshold), "min_size": int(e.min_size)}
    post: dict[str, Any] = {
        "kind": "unet_watershed",
        "fg_threshold": float(e.fg_threshold),
        "seed_threshold": float(e.seed_threshold),
        "min_seed_area": int(e.min_seed_area),
        "min_size": int(e.min_size),
    }
    # Only when used, so bundles without them keep their exact metadata.
    if e.seed_h:
        post["seed_h"] = float(e.seed_h)
    if e.by_modality:
        post["by_modality"] = {m: dict(v) for m, v in sorted(e.by_modality.items())}
    return post


def maskrcnn_postprocessing_section(cfg: TrainConfig) -> dict[str, Any]:
    m = cfg.maskrcnn
    return {
        "kind": "maskrcnn",
        "score_threshold": float(m.box_score_thresh),
        "mask_threshold": float(m.mask_threshold),
        "nms_threshold": float(m.box_nms_thresh),
        "min_size": int(cfg.eval.min_size),
    }


def postprocessing_section(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.model.kind == "maskrcnn":
        return maskrcnn_postprocessing_section(cfg)
    return unet_postprocessing_section(cfg)


def tiling_section(cfg: TrainConfig, *, tile: int | None = None, halo: int | None = None,
                   batch: int = 4) -> dict[str, int]:
    """The tiling the config was evaluated with; an export may choose another tile or halo."""
    halo = int(cfg.eval.halo if halo is None else halo)
    # The detector graph takes one fixed-size tile at a time.
    if cfg.model.kind == "maskrcnn":
        return {"tile": int(tile or cfg.maskrcnn.tile), "halo": halo, "batch": 1}
    return {"tile": int(tile or cfg.eval.tile), "halo": halo, "batch": int(batch)}


def mask_size(cfg: TrainConfig) -> int:
    # The mask head upsamples its RoIAlign output (mask_resolution) by 2 (ConvTranspose stride 2).
    return 2 * int(cfg.maskrcnn.mask_resolution)


def io_sections(cfg: TrainConfig, *, tile: int) -> dict[str, list[dict[str, Any]]]:
    """metadata.json's `inputs` and `outputs`: the tensors of the graph nseg-export writes for
    `cfg` (a UNet: any batch and size, probabilities; a Mask R-CNN: one `tile` x `tile` tile,
    boxes, scores and box-space masks)."""
    if cfg.model.kind == "maskrcnn":
        det = {"0": "detections"}
        m = mask_size(cfg)
        return {
            "inputs": [{"name": "image", "dtype": "float32", "shape": [1, 3, tile, tile], "dynamic_axes": {}}],
            "outputs": [
                {"name": "boxes", "dtype": "float32", "shape": ["detections", 4], "dynamic_axes": det,
                 "box_format": "xyxy"},
                {"name": "scores", "dtype": "float32", "shape": ["detections"], "dynamic_axes": det},
                {"name": "masks", "dtype": "float32", "shape": ["detections", 1, m, m], "dynamic_axes": det,
                 "channels": ["mask_probability"]},
            ],
        }
    dyn = {"0": "batch", "2": "height", "3": "width"}
    c = int(cfg.model.out_channels)
    return {
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"], "dynamic_axes": dyn}],
        "outputs": [{"name": "probs", "dtype": "float32", "shape": ["batch", c, "height", "width"], "dynamic_axes": dyn,
                     "channels": ["foreground", "distance"][:c]}],
    }


def scale_section(cfg: TrainConfig) -> dict[str, Any] | None:
    """metadata.json's `scale` for a model trained with images of small nuclei enlarged
    (`data.min_nucleus_diameter`): the runtime measures each image's nuclei and does the same.
    None otherwise (a bundle's measured training scale is then added by tools/bundle_scale.py)."""
    d = cfg.data.min_nucleus_diameter
    if d is None:
        return None
    return {"min_nucleus_diameter_px": float(d),
            "source": f"training enlarged every image whose median nucleus is under {d:g} px to {d:g} px "
                      "(data.min_nucleus_diameter)"}


def deployment_sections(cfg: TrainConfig, *, tile: int | None = None, halo: int | None = None,
                        batch: int = 4) -> dict[str, Any]:
    """metadata.json's `inputs`, `outputs`, `preprocessing`, `tiling`, `postprocessing` and `scale` for
    `cfg`: the one description that nseg-export writes into a bundle and validation runs
    (`in_memory_bundle`), so the two cannot drift apart."""
    tiling = tiling_section(cfg, tile=tile, halo=halo, batch=batch)
    scale = scale_section(cfg)
    return {**io_sections(cfg, tile=tiling["tile"]),
            "preprocessing": preprocessing_section(cfg),
            "tiling": tiling,
            "postprocessing": postprocessing_section(cfg),
            **({"scale": scale} if scale else {})}


class TorchBackend:
    """The runtime's Backend protocol over a torch model, with the exported graph's outputs: a UNet
    gives {'probs': sigmoid}; a Mask R-CNN takes one tile [1,3,T,T] and gives boxes, scores and
    box-space masks."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, *, kind: str = "unet", amp: bool = False) -> None:
        self.model = model.eval()
        self.device = device
        self.amp = amp and device.type == "cuda"
        self.detector = kind == "maskrcnn"

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        with torch.autocast(device_type=self.device.type, enabled=self.amp):
            if self.detector:
                if x.shape[0] != 1:
                    raise ValueError(f"the detector takes one tile per call, got a batch of {x.shape[0]}")
                out = self.model([x[0]])[0]
                return {k: out[k].float().cpu().numpy() for k in ("boxes", "scores", "masks")}
            y = self.model(x)
        return {"probs": torch.sigmoid(y.float()).cpu().numpy()}


def in_memory_bundle(cfg: TrainConfig) -> Bundle:
    """A Bundle describing `cfg` without any model file: the torch backend stands in for the graph."""
    sections = deployment_sections(cfg)
    pre = sections["preprocessing"]
    nd = pre["normalization"]

    def specs(key: str) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(d["name"], d["dtype"], tuple(d["shape"]), tuple(d.get("channels", ())))
                     for d in sections[key])

    return Bundle(
        path=Path("<in-memory>"),
        kind=cfg.model.kind,
        model_path=Path("<torch>"),
        sha256="",
        inputs=specs("inputs"),
        outputs=specs("outputs"),
        preprocessing=Preprocessing(
            normalization=Normalization(nd["low_percentile"], nd["high_percentile"], nd["kind"]),
            size_divisor=pre["size_divisor"],
            resize=pre.get("resize"),
        ),
        tiling=TilingSpec(**sections["tiling"]),
        postprocessing=MappingProxyType(sections["postprocessing"]),
        scale=ScaleSpec(**{k: v for k, v in sections.get("scale", {}).items() if k != "source"}),
    )


def runtime_predictor(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, *,
                      tile: int | None = None, overlap: int | None = None) -> Predictor:
    backend = TorchBackend(model, device, kind=cfg.model.kind, amp=cfg.optim.amp)
    return Predictor(in_memory_bundle(cfg), RunConfig(device="cpu", tile=tile, overlap=overlap), backend=backend)
