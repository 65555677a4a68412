"""Model builders with keyword-only parts. Models never read a global config."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
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


def _keep_output(module: torch.nn.Module, _inputs, output: torch.Tensor) -> None:
    # Stored on the decoder layer itself, so a deep copy of the network (weight averaging) keeps
    # its own outputs rather than writing into the original's.
    module.__dict__["_aux_output"] = output if module.training else None


class DeepSupervisedUNet(torch.nn.Module):
    """A MONAI UNet with 1x1 output heads on its inner decoder levels.

    In training mode the forward returns (output, [auxiliary outputs, finest first]), each
    auxiliary output upsampled to the input size; in eval mode only the output, so export, the
    runtime's torch backend and validation see a plain UNet. The auxiliary outputs are read from
    forward hooks on MONAI's decoder ("up") layers, which leaves the UNet itself untouched.
    """

    def __init__(self, *, unet: torch.nn.Module, channels: tuple[int, ...], levels: int, out_channels: int) -> None:
        super().__init__()
        self.unet = unet
        ups = []
        block = unet.model  # Sequential(down, SkipConnection(inner block), up) per level
        for _ in range(levels):
            block = block[1].submodule
            ups.append(block[2])
            block[2].register_forward_hook(_keep_output)
        # The up layer of level i (i = 1 just below the output) returns channels[i - 1] features.
        self.heads = torch.nn.ModuleList(torch.nn.Conv2d(channels[i], out_channels, 1) for i in range(levels))
        self.__dict__["_ups"] = tuple(ups)  # already registered inside the UNet: not again as children

    def forward(self, x: torch.Tensor):
        out = self.unet(x)
        if not self.training:
            return out
        feats = [up.__dict__.pop("_aux_output") for up in self._ups]
        aux = [F.interpolate(head(f), size=out.shape[-2:], mode="bilinear", align_corners=False)
               for head, f in zip(self.heads, feats, strict=True)]
        return out, aux


def unet_from_config(cfg: ModelConfig) -> torch.nn.Module:
    unet = build_unet(
        out_channels=cfg.out_channels,
        channels=cfg.channels,
        strides=cfg.strides,
        num_res_units=cfg.num_res_units,
        norm=cfg.norm,
        dropout=cfg.dropout,
    )
    if not cfg.deep_supervision:
        return unet
    return DeepSupervisedUNet(unet=unet, channels=cfg.channels, levels=cfg.deep_supervision, out_channels=cfg.out_channels)


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


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state_dict, also across deep supervision: a plain UNet's weights start a
    deep-supervised one (its heads keep their fresh initialisation), and a deep-supervised
    checkpoint gives a plain UNet its network without the training-only heads."""
    has_heads = any(k.startswith("unet.") for k in state)
    if isinstance(model, DeepSupervisedUNet) and not has_heads:
        model.unet.load_state_dict(state)
    elif not isinstance(model, DeepSupervisedUNet) and has_heads:
        model.load_state_dict({k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")})
    else:
        model.load_state_dict(state)
