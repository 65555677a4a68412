"""The label image `NAME.labels.tif`: OME-TIFF (`labelstiff`), uint16 when the labels fit, else
uint32; tiled BigTIFF with a pyramid for large images.

Its tiles and pyramid levels come from the whole label image, so the sink writes it from the
image's labels (an array, a memmap or a zarr array) when it closes, tile row by tile row, never
holding it whole; blocks add nothing.
"""

from __future__ import annotations

import numpy as np

from nseg_infer.sinks.base import LabelledImage, Sink
from nseg_infer.sinks.labelstiff import write_ome_labels


def label_dtype(max_label: int) -> np.dtype:
    return np.dtype(np.uint16) if max_label <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def count_labels(labels: np.ndarray, band: int = 1024) -> int:
    """How many distinct labels (nuclei) `labels` holds, `band` rows at a time."""
    top = 0
    for y in range(0, labels.shape[0], band):
        top = max(top, int(np.asarray(labels[y:y + band]).max(initial=0)))
    present = np.zeros(top + 1, bool)
    for y in range(0, labels.shape[0], band):
        present[np.asarray(labels[y:y + band])] = True
    return int(present[1:].sum())


class LabelsTiffSink(Sink):
    """`tiled`: a tiled BigTIFF (images above `FileConfig.large_px`)."""

    product = "labels"

    def start(self, image: LabelledImage, *, tiled: bool = False) -> None:
        self.image, self.tiled = image, tiled
        self.tmp = self.temp(self.path)

    def finish(self) -> None:
        im = self.image
        write_ome_labels(self.tmp, im.labels, label_dtype(im.max_label), tiled=self.tiled,
                         pixel_size_um=im.pixel_size_um, name=im.name)
