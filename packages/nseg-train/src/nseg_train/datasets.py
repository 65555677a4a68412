"""UNet training data: samples prepared once (normalised image + targets), cropped and augmented per step."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from nseg_data.sample import Sample
from nseg_data.size import enlarging_factor, median_diameter
from nseg_data.sources import source_of
from nseg_infer.engine.preprocess import Normalization, normalize, resize_image
from skimage.transform import resize as sk_resize

from nseg_train.augment import geometric, photometric, random_crop
from nseg_train.config import TrainConfig
from nseg_train.targets import make_targets


@dataclass(frozen=True, eq=False)
class Prepared:
    id: str
    modality: str
    image: np.ndarray  # HxWx3 float32, normalised, possibly resized
    target: np.ndarray  # CxHxW float32
    source: str = ""
    scale: float = 1.0  # crops are drawn enlarged this much (data.min_nucleus_diameter)


def normalize_for(cfg: TrainConfig, image: np.ndarray) -> np.ndarray:
    """The one normalisation used in training, validation and (through the bundle) the runtime."""
    d = cfg.data
    return normalize(image, Normalization(d.low_percentile, d.high_percentile, d.normalization))


def resize_pair(image: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    # The image exactly as the runtime resizes it for a bundle with `preprocessing.resize`.
    img = resize_image(image, size)
    lab = sk_resize(labels, (size, size), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint32)
    return img, lab


def prepare(samples: list[Sample], cfg: TrainConfig) -> list[Prepared]:
    out = []
    for s in samples:
        if s.labels is None:
            raise ValueError(f"{s.source}: training sample has no labels")
        img = normalize_for(cfg, s.image)
        labels = s.labels
        if cfg.data.resize:
            img, labels = resize_pair(img, labels, cfg.data.resize)
        out.append(Prepared(s.id, str(s.modality), img, make_targets(labels, cfg.model.targets), source_of(s),
                            enlarging_scale(labels, cfg.data.min_nucleus_diameter)))
    return out


def enlarging_scale(labels: np.ndarray, min_diameter: float | None) -> float:
    """The factor that brings `labels`' median nucleus up to `min_diameter` px (`enlarging_factor`;
    1 without one, or with no nuclei)."""
    if min_diameter is None:
        return 1.0
    d = median_diameter(labels)
    return 1.0 if d is None else enlarging_factor(d, min_diameter)


def sampling_weights(modalities: list[str], balance: float, sources: list[str] | None = None,
                     source_balance: float = 0.0) -> np.ndarray:
    """Per-image draw probabilities, source by source: a source's share ∝ n_source^(1 - source_balance),
    a modality's share within its source ∝ n^(1 - balance), images uniform within. With one source this
    is count(modality)^-balance: 0 = uniform over images, 1 = uniform over modalities."""
    sources = sources if sources is not None else [""] * len(modalities)
    n_src = Counter(sources)
    n_mod = Counter(zip(sources, modalities, strict=True))
    src_share = {s: n ** (1 - source_balance) for s, n in n_src.items()}
    total = sum(src_share.values())
    mod_total = Counter()
    for (s, _m), n in n_mod.items():
        mod_total[s] += n ** (1 - balance)
    w = np.array([src_share[s] / total * n_mod[s, m] ** (1 - balance) / mod_total[s] / n_mod[s, m]
                  for s, m in zip(sources, modalities, strict=True)], dtype=np.float64)
    return w / w.sum()


class CropDataset(torch.utils.data.Dataset):
    """len = images x crops_per_image; item i draws an image by modality-balanced weight and a crop.

    Randomness derives from (seed, epoch, index) so runs are reproducible whatever the worker count.
    """

    def __init__(self, prepared: list[Prepared], cfg: TrainConfig, *, seed: int) -> None:
        if not prepared:
            raise ValueError("no training samples")
        self.items = prepared
        self.cfg = cfg
        self.seed = seed
        self.epoch = 0
        self.weights = sampling_weights([p.modality for p in prepared], cfg.data.modality_balance,
                                        [p.source for p in prepared], cfg.data.source_balance)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items) * self.cfg.data.crops_per_image

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        p = self.items[int(rng.choice(len(self.items), p=self.weights))]
        aug = self.cfg.augment
        size = self.cfg.data.crop_size
        if self.cfg.data.crop_sampler == "pos_neg":
            img, tgt = self._pos_neg_crop(rng, p, size)
        else:
            lo, hi = aug.scale
            scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
            img, tgt = random_crop(rng, p.image, p.target, size, scale * p.scale)
        img, tgt = geometric(rng, img, tgt, aug)
        img = photometric(rng, img, aug)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), torch.from_numpy(tgt.copy())

    @staticmethod
    def _pos_neg_crop(rng: np.random.Generator, p: Prepared, size: int):
        """MONAI RandCropByPosNegLabel (pos=neg=1): centre on a foreground pixel half the time."""
        fg = p.target[0] > 0
        want_pos = rng.random() < 0.5
        cand = np.flatnonzero(fg if want_pos else ~fg)
        if cand.size == 0:
            cand = np.arange(fg.size)
        cy, cx = np.unravel_index(int(rng.choice(cand)), fg.shape)
        h, w = fg.shape
        y = int(np.clip(cy - size // 2, 0, max(h - size, 0)))
        x = int(np.clip(cx - size // 2, 0, max(w - size, 0)))
        return p.image[y : y + size, x : x + size], p.target[:, y : y + size, x : x + size]
