"""The file settings (`FileConfig`): how input files are read and which products are written.

`engine.config.RunConfig` holds what the Predictor needs (tiles, batches, instance blocks, the
label canvas); a `FileConfig` holds what only a runner that reads files and writes products needs:
the input options (channels, pixel size, nucleus diameter), the limits on reading a file, the
products and the overlay's size. The file runner, the folder watch, the cluster, the command line
and the tools take both.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nseg_infer.engine.canvas import label_canvas
from nseg_infer.regions import ImageSource
from nseg_infer.sinks.outputs import DEFAULT_PRODUCTS, parse_products
from nseg_infer.sources.formats import LARGE_IMAGE_PX, MAX_PIXELS
from nseg_infer.sources.imageio import open_image
from nseg_infer.sources.options import InputOptions


@dataclass(frozen=True)
class FileConfig:
    """How each file is read (`inputs`, `region_px`, `max_pixels`) and what is written for it
    (`products`, `large_px`, `block`, `overview_side`). `products` may be given as "labels,csv" or a sequence: it is
    stored as a validated tuple in the canonical order."""

    inputs: InputOptions = field(default_factory=InputOptions)
    region_px: int = LARGE_IMAGE_PX  # above: TIFFs are read window by window
    max_pixels: int = MAX_PIXELS    # above: an input is refused from its header, before decoding
    products: tuple[str, ...] = DEFAULT_PRODUCTS
    large_px: int = LARGE_IMAGE_PX  # above: labels on disk (memmap), a tiled BigTIFF, written alone
    block: int = 2048               # product blocks (and the zarr product's chunks): bounds peak memory
    overview_side: int = 4096       # overlay longest side for large images

    def __post_init__(self) -> None:
        object.__setattr__(self, "products", parse_products(self.products))
        if not isinstance(self.inputs, InputOptions):
            raise TypeError(f"inputs must be an InputOptions, got {type(self.inputs).__name__}")
        if self.region_px < 1 or self.overview_side < 64:
            raise ValueError(f"region_px must be >= 1 and overview_side >= 64, got {self.region_px}, "
                             f"{self.overview_side}")
        if self.max_pixels < 1 or self.large_px < 1 or self.block < 64:
            raise ValueError(f"max_pixels and large_px must be >= 1 and block >= 64, got {self.max_pixels}, "
                             f"{self.large_px}, {self.block}")

    def open(self, path: str | os.PathLike) -> ImageSource:
        """`path` opened under these reading limits (region reads above `region_px`, refused above
        `max_pixels`)."""
        return open_image(path, region_threshold_px=self.region_px, max_pixels=self.max_pixels)

    def canvas(self, shape: tuple[int, int], *, work_dir: Path | None = None) -> AbstractContextManager[np.ndarray]:
        """A zeroed label canvas of `shape` for the `with` block: on disk above `large_px` pixels
        (a hidden temp file in `work_dir`, removed when the block ends)."""
        return label_canvas(shape, large_px=self.large_px, work_dir=work_dir)
