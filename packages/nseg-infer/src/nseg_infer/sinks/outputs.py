"""A file's products: which ones (`--products`), where (`ProductPaths`), the sinks that write them
(`open_sinks`) and the loop that feeds them the image's blocks (`write_products`).

Products are written block by block over the label image (an array, a disk-backed memmap for
huge images, or a cluster's zarr array), so memory does not grow with the image. The product
blocks (`product_blocks`) are the instance blocks of `RunConfig.block`, trimmed to a multiple of
the overlay's downsampling factor; a small image is one block. Each block's nuclei are measured
once and rendered into parts (`block_parts`: CSV rows, GeoJSON features, ROIs) that the sinks
append in block order, so a cluster may render the parts of many blocks in parallel and write
the same files (`write_products(..., parts=...)`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nseg_data.atomic import write_bytes_atomic

from nseg_infer.engine.tiling import Block, block_grid
from nseg_infer.sinks.base import BlockData, LabelledImage, PartSink, Sink
from nseg_infer.sinks.labels import LabelsTiffSink, count_labels, label_dtype
from nseg_infer.sinks.names import PRODUCT_SUFFIXES, SUFFIXES
from nseg_infer.sinks.nuclei import MeasureOptions, measure_all
from nseg_infer.sinks.omezarr import ZarrSink
from nseg_infer.sinks.overlay import OverlaySink, overview_factor
from nseg_infer.sinks.shapes import GeoJsonGzSink, GeoJsonSink, RoiSink
from nseg_infer.sinks.table import CsvSink

# What the runners and the API take from here; the label and measurement helpers live in their own
# modules and are offered here too.
__all__ = ["DEFAULT_PRODUCTS", "PRODUCTS", "PRODUCT_SUFFIXES", "MeasureOptions", "Parts",
           "ProductPaths", "SinkOptions", "block_data", "block_parts", "label_dtype", "measure_all", "open_sinks", "parse_products",
           "product_blocks", "write_products"]

log = logging.getLogger(__name__)

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


def open_sinks(paths: ProductPaths, image: LabelledImage, opts: SinkOptions) -> list[Sink]:
    """The sinks of `paths.products`, open (their temp files made), in the order of PRODUCTS."""
    options = {"labels": {"tiled": opts.tiled}, "overlay": {"overview_side": opts.overview_side},
               "zarr": {"chunk": opts.block}}
    with contextlib.ExitStack() as stack:  # one that fails to open closes those opened before it
        sinks = [stack.enter_context(SINKS[p].open(paths.path(p), image, **options.get(p, {})))
                 for p in paths.products]
        stack.pop_all()
    return sinks


@dataclass(frozen=True)
class Parts:
    """One block's share of the nuclei products: how many nuclei it owns, how many of them its
    margin may cut, and the rendered parts by `PartSink.part_name`."""

    nuclei: int = 0
    cut: int = 0
    data: dict[str, bytes] = field(default_factory=dict)

    def save(self, stem: Path) -> None:
        """Each part as `STEM.PART_NAME`, atomically (a retried task rewrites the same files)."""
        for name, part in self.data.items():
            write_bytes_atomic(stem.with_name(f"{stem.name}.{name}"), part)

    @classmethod
    def load(cls, stem: Path, names: Sequence[str], nuclei: int, cut: int) -> Parts:
        return cls(nuclei, cut, {n: stem.with_name(f"{stem.name}.{n}").read_bytes() for n in names})


def part_sinks(products: Sequence[str]) -> list[type[PartSink]]:
    """The sink classes of `products` that take parts, one per part name."""
    chosen: dict[str, type[PartSink]] = {}
    for p in products:
        cls = SINKS[p]
        if issubclass(cls, PartSink):
            chosen.setdefault(cls.part_name, cls)
    return list(chosen.values())


def block_parts(products: Sequence[str], data: BlockData) -> Parts:
    """The parts of `products` for one block (nothing is measured when none takes parts)."""
    kinds = part_sinks(products)
    if not kinds:
        return Parts()
    nuclei = data.nuclei
    return Parts(len(nuclei.rows), nuclei.cut, {k.part_name: k.part(nuclei, data.image) for k in kinds})


def block_data(image: LabelledImage, block: Block, products: Sequence[str]) -> BlockData:
    """`block` of `image` for the sinks of `products` (outlines measured only if one draws them)."""
    return BlockData(image, block, polygons=any(k.polygons for k in part_sinks(products)))


def write_products(paths: ProductPaths, image: LabelledImage, opts: SinkOptions = SinkOptions(), *,
                   parts: Callable[[Block], Parts] | None = None) -> int:
    """Write the products chosen in `paths` block by block; returns the number of nuclei. `parts`
    gives each block's parts already rendered (a cluster's block tasks) instead of measuring here."""
    n = cut = 0
    with contextlib.ExitStack() as stack:  # sinks not closed by the end remove their temp files
        sinks = [stack.enter_context(s) for s in open_sinks(paths, image, opts)]
        for b in product_blocks(image.shape, opts):
            data = block_data(image, b, paths.products)
            got = parts(b) if parts is not None else block_parts(paths.products, data)
            for s in sinks:
                if isinstance(s, PartSink):
                    s.add_part(got.data[s.part_name])
                else:
                    s.add_block(data)
            n, cut = n + got.nuclei, cut + got.cut
        for s in sinks:
            s.close()
    if not part_sinks(paths.products):
        n = count_labels(image.labels)
    if cut:
        log.warning("%s: %d nuclei larger than the block margin (%d px) may be measured incompletely",
                    paths.path("csv"), cut, opts.margin)
    return n
