"""Modality inferred from the image alone.

DSB 2018 holds three looks: fluorescence (gray, dark background), brightfield (gray, light
background) and histology (coloured, mostly H&E). Colour saturation separates histology; the
background level separates the two gray kinds.
"""

from __future__ import annotations

import numpy as np

from nseg_data.sample import Modality

SATURATION_THRESHOLD = 1.5  # mean |channel - gray|; gray images in DSB are exactly 0, H&E >= 12
BRIGHT_BACKGROUND = 110.0  # median gray level of a light-background image


def infer_modality(image: np.ndarray) -> Modality:
    """Classify an HxWx3 uint8 image as fluorescence, brightfield or histology."""
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 65536)))
    # Subsample before the float copy: same pixels, a fraction of the memory traffic.
    img = image[::step, ::step].astype(np.float32)
    gray = img.mean(axis=2)
    colourfulness = float(np.abs(img - gray[..., None]).mean())
    median = float(np.median(gray))
    if colourfulness > SATURATION_THRESHOLD:
        return Modality.HISTOLOGY
    if median > BRIGHT_BACKGROUND:
        return Modality.BRIGHTFIELD
    return Modality.FLUORESCENCE
