"""Nucleus size in a label image: the one measure training, inference and tools share.

A nucleus's equivalent diameter is that of the disc of its area, sqrt(4 area / pi); an image's
nucleus size is the median over its nuclei. Training brings each image to one median diameter by
it, and the runtime measures the nuclei a first pass finds the same way (`nseg_infer.engine.size`).
"""

from __future__ import annotations

import math

import numpy as np

# An image is brought at most this far towards a model's nucleus size, in training and at inference:
# beyond it a crop would be a few pixels of the image blown up, or a whole image shrunk to a speck.
MAX_NORMALISING = 4.0


def normalising_factor(diameter_px: float, target_px: float) -> float:
    """The resampling factor that brings nuclei of `diameter_px` to `target_px`, within MAX_NORMALISING."""
    return float(min(max(target_px / diameter_px, 1 / MAX_NORMALISING), MAX_NORMALISING))


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """The equivalent diameter (px) of each label present in `labels` (0 is background), in label order."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    return np.sqrt(4.0 * areas / math.pi)


def median_diameter(labels: np.ndarray, *, min_nuclei: int = 1) -> float | None:
    """The median equivalent diameter (px) of the nuclei in `labels`; None with fewer than `min_nuclei`."""
    d = equivalent_diameters(labels)
    return float(np.median(d)) if len(d) >= max(1, min_nuclei) else None
