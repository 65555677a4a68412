"""Mask R-CNN training data: native-resolution crops, modality-balanced like the UNet's, with
joint image / box / mask augmentation in torchvision.transforms.v2 on tv_tensors.

Boxes use pixel-edge coordinates (x0, y0, x1 + 1, y1 + 1 for a mask spanning pixels x0..x1), the
convention under which v2's flips and 90-degree rotations map a mask's box to the box of the
transformed mask exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from nseg_data.sample import Sample
from nseg_data.sources import source_of
from scipy import ndimage as ndi
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from nseg_train.augment import photometric
from nseg_train.config import AugmentConfig, TrainConfig
from nseg_train.datasets import normalize_for, resize_pair, sampling_weights


@dataclass(frozen=True, eq=False)
class DetectionItem:
    id: str
    modality: str
    image: np.ndarray  # HxWx3 float32, normalised
    labels: np.ndarray  # HxW uint32 instance labels
    source: str = ""


def prepare_detection(samples: list[Sample], cfg: TrainConfig) -> list[DetectionItem]:
    out = []
    for s in samples:
        if s.labels is None:
            raise ValueError(f"{s.source}: training sample has no labels")
        img, labels = normalize_for(cfg, s.image), s.labels
        if cfg.data.resize:
            img, labels = resize_pair(img, labels, cfg.data.resize)
        out.append(DetectionItem(s.id, str(s.modality), img, labels, source_of(s)))
    return out


def instance_targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [N,4] float32 pixel-edge XYXY, masks [N,H,W] uint8) for the labels present."""
    ids, boxes = [], []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        ids.append(i)
        boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
    if not ids:
        return np.zeros((0, 4), np.float32), np.zeros((0, *labels.shape), np.uint8)
    masks = (labels[None] == np.asarray(ids, dtype=labels.dtype)[:, None, None]).astype(np.uint8)
    return np.asarray(boxes, np.float32), masks


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Pixel-edge boxes of [N,H,W] masks (each non-empty)."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    m = masks.bool()
    rows, cols = m.any(dim=2), m.any(dim=1)
    h, w = masks.shape[-2:]
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    y0 = torch.where(rows, ar_h, h).amin(dim=1)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x0 = torch.where(cols, ar_w, w).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    return torch.stack([x0, y0, x1, y1], dim=1).float()


class RandomRot90(v2.Transform):
    """Rotation by k x 90 degrees, k uniform in 0..3; exact for images, masks and boxes."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(0, 4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["k"] == 0:
            return inpt
        return self._call_kernel(F.rotate, inpt, angle=90.0 * params["k"], expand=True)


class UNetPhotometric(v2.Transform):
    """The UNet's photometric augmentation (nseg_train.augment.photometric), on the image only,
    so both model kinds learn the same invariances (inversion, grayscale, stain jitter, ...)."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"seed": int(torch.randint(0, 2**31 - 1, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        img = inpt.permute(1, 2, 0).numpy()
        out = photometric(np.random.default_rng(params["seed"]), img, self.cfg)
        return tv_tensors.wrap(torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))), like=inpt)


def build_augmentation(cfg: AugmentConfig) -> v2.Compose:
    ops: list[v2.Transform] = []
    if cfg.flips:
        ops += [v2.RandomHorizontalFlip(0.5), v2.RandomVerticalFlip(0.5)]
    if cfg.rot90:
        ops.append(RandomRot90())
    ops.append(UNetPhotometric(cfg))
    return v2.Compose(ops)


def to_tv(image: np.ndarray, labels: np.ndarray) -> tuple[tv_tensors.Image, dict[str, Any]]:
    boxes, masks = instance_targets(labels)
    h, w = labels.shape
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(h, w)),
        "masks": tv_tensors.Mask(torch.from_numpy(masks)),
        "labels": torch.ones(len(boxes), dtype=torch.int64),
    }
    return img, target


def rescale(img: tv_tensors.Image, target: dict[str, Any], size: tuple[int, int]):
    """Joint resize: bilinear image, nearest masks, scaled boxes."""
    img = F.resize(img, list(size), antialias=True)
    target = dict(target)
    target["boxes"] = F.resize(target["boxes"], list(size))
    target["masks"] = F.resize(target["masks"], list(size), interpolation=v2.InterpolationMode.NEAREST_EXACT)
    return img, target


def finalize_target(target: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop instances a crop or rescale emptied; boxes tight around each mask, as Mask R-CNN's
    box targets should be (a rescaled box can be up to a pixel off its nearest-resampled mask)."""
    masks = target["masks"].as_subclass(torch.Tensor)
    keep = masks.flatten(1).bool().any(dim=1) if masks.shape[0] else torch.zeros(0, dtype=torch.bool)
    masks = masks[keep]
    return {"boxes": boxes_from_masks(masks), "labels": torch.ones(int(keep.sum()), dtype=torch.int64), "masks": masks}


class DetectionDataset(torch.utils.data.Dataset):
    """Item i: (image [3,H,W] float32, {boxes, labels, masks}). Like the UNet's CropDataset, the
    image is drawn with modality-balanced weights and all randomness derives from (seed, epoch,
    index), so a resumed run sees the batches the uninterrupted run would have seen."""

    def __init__(self, items: list[DetectionItem], cfg: TrainConfig, *, seed: int) -> None:
        if not items:
            raise ValueError("no training samples")
        self.items = items
        self.cfg = cfg
        self.seed = seed
        self.epoch = 0
        self.weights = sampling_weights([p.modality for p in items], cfg.data.modality_balance,
                                        [p.source for p in items], cfg.data.source_balance)
        self.augment = build_augmentation(cfg.augment)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        per_epoch = self.cfg.maskrcnn.iterations_per_epoch
        if per_epoch:
            return per_epoch * self.cfg.optim.batch_size
        return len(self.items) * self.cfg.data.crops_per_image

    def crop(self, rng: np.random.Generator, item: DetectionItem) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """A window of crop_size / scale (at most the image), and the size it is rescaled to."""
        lo, hi = self.cfg.augment.scale
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
        h, w = item.labels.shape
        win = max(8, int(round(self.cfg.data.crop_size / scale)))
        wh, ww = min(win, h), min(win, w)
        y = int(rng.integers(0, h - wh + 1))
        x = int(rng.integers(0, w - ww + 1))
        out = (max(8, int(round(wh * scale))), max(8, int(round(ww * scale))))
        return item.image[y : y + wh, x : x + ww], item.labels[y : y + wh, x : x + ww], out

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        item = self.items[int(rng.choice(len(self.items), p=self.weights))]
        image, labels, size = self.crop(rng, item)
        img, target = to_tv(image, labels)
        if size != labels.shape:
            img, target = rescale(img, target, size)
        # v2 draws from torch's global generator: seed a forked copy so items are reproducible
        # and the model's own sampling (RPN / ROI) is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(0, 2**63 - 1)))
            img, target = self.augment(img, target)
        return img.as_subclass(torch.Tensor).contiguous(), finalize_target(target)


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    return [b[0] for b in batch], [b[1] for b in batch]
