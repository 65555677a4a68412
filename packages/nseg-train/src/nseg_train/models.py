"""Model builders with keyword-only parts. Models never read a global config."""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks.nets import UNet

from nseg_train.config import ModelConfig, TrainConfig


def build_unet(
    *,
    in_channels: int = 3,
    out_channels: int,
    channels: tuple[int, ...],
    strides: tuple[int, ...],
    num_res_units: int,
    norm: str = "batch",
    dropout: float = 0.0,
) -> torch.nn.Module:
    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )


def unet_from_config(cfg: ModelConfig) -> torch.nn.Module:
    return build_unet(
        out_channels=cfg.out_channels,
        channels=cfg.channels,
        strides=cfg.strides,
        num_res_units=cfg.num_res_units,
        norm=cfg.norm,
        dropout=cfg.dropout,
    )


# Kind -> builder from the model section alone (a plain dict, no registry class). Mask R-CNN is built
# from its own config section instead, in `build_model_for`.
MODEL_BUILDERS: dict[str, Callable[[ModelConfig], torch.nn.Module]] = {"unet": unet_from_config}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model_for(cfg: TrainConfig) -> torch.nn.Module:
    """The architecture a whole config describes, without any pretrained weights (checkpoints
    bring their own). Mask R-CNN needs its own config section, hence not MODEL_BUILDERS."""
    if cfg.model.kind == "maskrcnn":
        from nseg_train.maskrcnn import maskrcnn_from_config

        return maskrcnn_from_config(cfg.maskrcnn)
    return MODEL_BUILDERS[cfg.model.kind](cfg.model)
