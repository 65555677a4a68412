"""A bundle's whole-image `preprocessing.resize` (the seed study's setup): the whole image
normalised by its own statistics, then resized to one square, as training prepared its images.

The resized pixels come normalised, so the plan cannot measure them: `ResizedImage` keeps the
(low, high) and the modality of the image they came from, and `Planner.plan` takes those with an
identity tile normalisation. This is the engine's own step, made for it by `resized`; the source
it decorates knows nothing of it.
"""

from __future__ import annotations

import numpy as np

from nseg_infer.engine.preprocess import Normalization, apply_norm, as_rgb, resize_image
from nseg_infer.engine.stats import image_stats
from nseg_infer.regions import ArraySource, ImageSource


class ResizedImage(ArraySource):
    """`size` x `size` float32 pixels, normalised by the whole-image `norm` (low, high) of the
    image they came from, whose `modality` they also carry."""

    def __init__(self, pixels: np.ndarray, src: ImageSource, norm: tuple[float, float], modality: str) -> None:
        super().__init__(pixels, src.path, src.info)
        self.norm, self.modality = norm, modality


def resized(src: ImageSource, size: int, normalization: Normalization) -> ResizedImage:
    """`src` as a bundle with `preprocessing.resize` = `size` sees it (bilinear, no anti-aliasing:
    `preprocess.resize_image`)."""
    lo, hi, modality = image_stats(src, normalization, modality=True)
    pixels = resize_image(apply_norm(as_rgb(src.read_all(), source=str(src.path)), lo, hi), size)
    return ResizedImage(pixels, src, (lo, hi), str(modality))
