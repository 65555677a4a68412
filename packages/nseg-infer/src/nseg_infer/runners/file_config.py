"""The file settings (`FileConfig`): how input files are read and which products are written.

`engine.config.RunConfig` holds what the Predictor needs (tiles, batches, instance blocks, the
label canvas); a `FileConfig` holds what only a runner that reads files and writes products needs:
the input options (channels, pixel size, nucleus diameter), the limits on reading a file, the
products and the overlay's size. The file runner, the folder watch, the cluster, the command line
and the tools take both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nseg_infer.regions import ImageSource
from nseg_infer.sinks.outputs import DEFAULT_PRODUCTS, parse_products
from nseg_infer.sources.formats import MAX_PIXELS, REGION_THRESHOLD_PX
from nseg_infer.sources.imageio import open_image
from nseg_infer.sources.options import InputOptions


@dataclass(frozen=True)
class FileConfig:
    """How each file is read (`inputs`, `region_px`, `max_pixels`) and what is written for it
    (`products`, `overview_side`). `products` may be given as "labels,csv" or a sequence: it is
    stored as a validated tuple in the canonical order."""

    inputs: InputOptions = field(default_factory=InputOptions)
    region_px: int = REGION_THRESHOLD_PX  # above: TIFFs are read window by window
    max_pixels: int = MAX_PIXELS    # above: an input is refused from its header, before decoding
    products: tuple[str, ...] = DEFAULT_PRODUCTS
    overview_side: int = 4096       # overlay longest side for large images

    def __post_init__(self) -> None:
        object.__setattr__(self, "products", parse_products(self.products))
        if not isinstance(self.inputs, InputOptions):
            raise TypeError(f"inputs must be an InputOptions, got {type(self.inputs).__name__}")
        if self.region_px < 1 or self.overview_side < 64:
            raise ValueError(f"region_px must be >= 1 and overview_side >= 64, got {self.region_px}, "
                             f"{self.overview_side}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")

    def open(self, path: str | os.PathLike) -> ImageSource:
        """`path` opened under these reading limits (region reads above `region_px`, refused above
        `max_pixels`)."""
        return open_image(path, region_threshold_px=self.region_px, max_pixels=self.max_pixels)
