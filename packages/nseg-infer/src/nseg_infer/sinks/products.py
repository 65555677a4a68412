"""Which products a file gets and where: the product table (`--products`, `parse_products`), their
paths (`ProductPaths`), how they are cut and shaped (`SinkOptions`, `product_blocks`). The loop that
writes them is `sinks.outputs`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nseg_infer.engine.tiling import Block, block_grid
from nseg_infer.sinks.base import Sink
from nseg_infer.sinks.labels import LabelsTiffSink
from nseg_infer.sinks.names import SUFFIXES
from nseg_infer.sinks.omezarr import ZarrSink
from nseg_infer.sinks.overlay import OverlaySink, overview_factor
from nseg_infer.sinks.shapes import GeoJsonGzSink, GeoJsonSink, RoiSink
from nseg_infer.sinks.table import CsvSink

SINKS: dict[str, type[Sink]] = {s.product: s for s in (LabelsTiffSink, CsvSink, OverlaySink, GeoJsonSink,
                                                       GeoJsonGzSink, RoiSink, ZarrSink)}
PRODUCTS = tuple(SINKS)
DEFAULT_PRODUCTS = ("labels", "csv", "overlay", "geojson")
def parse_products(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`labels,csv,geojson` (or a sequence) -> the products in their canonical order."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else [str(n).strip() for n in spec]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in PRODUCTS]
    if unknown:
        raise ValueError(f"unknown product {unknown[0]!r}; choose from {', '.join(PRODUCTS)}")
    if not names:
        raise ValueError(f"no products chosen; choose from {', '.join(PRODUCTS)}")
    return tuple(p for p in PRODUCTS if p in names)


@dataclass(frozen=True)
class ProductPaths:
    """Where the chosen `products` of one input go: `OUT/NAME` plus each product's suffix."""

    base: Path                          # OUT/NAME
    products: tuple[str, ...] = DEFAULT_PRODUCTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "products", parse_products(self.products))

    @classmethod
    def for_input(cls, name: str, out_dir: Path, products: Sequence[str] = DEFAULT_PRODUCTS) -> ProductPaths:
        return cls(out_dir / name, tuple(products))

    def path(self, product: str) -> Path:
        return self.base.with_name(self.base.name + SUFFIXES[product])

    def all(self) -> tuple[Path, ...]:
        """The chosen products' paths, in the order of PRODUCTS."""
        return tuple(self.path(p) for p in self.products)


@dataclass(frozen=True)
class SinkOptions:
    """How the products of one image are cut and shaped (`runners.files.sink_options`: from
    `FileConfig` and the block margin of `RunConfig`)."""

    tiled: bool = False         # the labels as a tiled BigTIFF (images above `FileConfig.large_px`)
    block: int = 2048           # product blocks, and the zarr product's chunks
    margin: int = 128           # a nucleus is measured whole up to this far beyond its block
    overview_side: int = 4096   # the overlay's longest side for large images

    def __post_init__(self) -> None:
        if self.block < 1 or self.margin < 0 or self.overview_side < 1:
            raise ValueError(f"block and overview_side must be >= 1 and margin >= 0, got {self}")


def product_blocks(shape: tuple[int, int], opts: SinkOptions) -> tuple[Block, ...]:
    """The blocks products are written in: `opts.block` trimmed to a multiple of the overlay's
    downsampling factor, so each block fills whole overview cells."""
    h, w = shape
    factor = overview_factor(h, w, opts.overview_side)
    return block_grid(h, w, max(factor, (opts.block // factor) * factor), opts.margin)
