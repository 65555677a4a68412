"""What differs between model kinds, behind one small interface the engine drives.

A task builds the model, the training dataset and its collate function, computes the loss of one
batch, and predicts instances for validation. `TASKS` maps a model kind to its task factory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from nseg_data.sample import Sample
from nseg_infer.engine.predictor import Predictor
from nseg_infer.regions import ArraySource
from nseg_infer.runners.prepare import ModelInput, sized_input

from nseg_train.config import TrainConfig
from nseg_train.datasets import CropDataset, prepare
from nseg_train.deploy import runtime_predictor
from nseg_train.detection_data import DetectionDataset, collate_detection, prepare_detection
from nseg_train.losses import deep_supervision_loss, unet_loss
from nseg_train.maskrcnn import load_backbone_weights, maskrcnn_from_config
from nseg_train.models import MODEL_BUILDERS


class Task(Protocol):
    cfg: TrainConfig

    def build_model(self) -> torch.nn.Module: ...

    def train_dataset(self, samples: list[Sample], *, seed: int) -> torch.utils.data.Dataset: ...

    collate: Callable[[list[Any]], Any] | None

    def loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]: ...

    def predict(self, model: torch.nn.Module, sample: Sample, cfg: TrainConfig, device: torch.device) -> np.ndarray: ...


def runtime_input(predictor: Predictor, image: np.ndarray) -> ModelInput:
    """An in-memory image as `nseg-infer run` hands it to the Predictor (`source`: its nuclei
    measured and rescaled where the bundle asks, or the bundle's whole-image `resize` applied),
    with the way back to the image's size (`to_input`)."""
    return sized_input(predictor, ArraySource(image))


def runtime_labels(model: torch.nn.Module, sample: Sample, cfg: TrainConfig, device: torch.device) -> np.ndarray:
    """Validation labels from the runtime's own Predictor (normalisation, resize, tiling, blending,
    instance step), the model standing in for the exported graph: a validation score is a user's."""
    predictor = runtime_predictor(model, cfg, device)
    inp = runtime_input(predictor, sample.image)
    return inp.to_input((inp.made or predictor.predict(inp.source)).labels)[0]


class UNetTask:
    collate = None

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def build_model(self) -> torch.nn.Module:
        return MODEL_BUILDERS["unet"](self.cfg.model)

    def train_dataset(self, samples: list[Sample], *, seed: int) -> CropDataset:
        return CropDataset(prepare(samples, self.cfg), self.cfg, seed=seed)

    def loss(self, model, batch, device):
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        if isinstance(out, tuple):  # deep supervision: the output, then auxiliary outputs finest first
            return deep_supervision_loss(self.cfg.optim.loss, out[0], out[1], y)
        return unet_loss(self.cfg.optim.loss, out, y)

    def predict(self, model, sample, cfg, device):
        return runtime_labels(model, sample, cfg, device)


class MaskRCNNTask:
    collate = staticmethod(collate_detection)

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def build_model(self) -> torch.nn.Module:
        model = maskrcnn_from_config(self.cfg.maskrcnn)
        if self.cfg.maskrcnn.backbone_weights:
            load_backbone_weights(model, self.cfg.maskrcnn.backbone_weights, backbone=self.cfg.maskrcnn.backbone)
        return model

    def train_dataset(self, samples: list[Sample], *, seed: int) -> DetectionDataset:
        return DetectionDataset(prepare_detection(samples, self.cfg), self.cfg, seed=seed)

    def loss(self, model, batch, device):
        images, targets = batch
        images = [x.to(device, non_blocking=True) for x in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        parts = model(images, targets)
        # torchvision's loss dict is the objective detectron2 optimises too: an unweighted sum.
        loss = sum(parts.values())
        return loss, {k: float(v.detach()) for k, v in parts.items()}

    def predict(self, model, sample, cfg, device):
        return runtime_labels(model, sample, cfg, device)


TASKS: dict[str, Callable[[TrainConfig], Task]] = {"unet": UNetTask, "maskrcnn": MaskRCNNTask}
