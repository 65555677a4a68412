"""A file's products written: the sinks that write them (`open_sinks`) and the loop that feeds them
the image's blocks (`write_products`). Which products and where: `sinks.products`.

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

from nseg_infer.engine.tiling import Block
from nseg_infer.sinks.base import BlockData, LabelledImage, PartSink, Sink
from nseg_infer.sinks.labels import count_labels, label_dtype
from nseg_infer.sinks.names import PRODUCT_SUFFIXES
from nseg_infer.sinks.nuclei import MeasureOptions, measure_all
from nseg_infer.sinks.products import (
    DEFAULT_PRODUCTS,
    PRODUCTS,
    SINKS,
    ProductPaths,
    SinkOptions,
    parse_products,
    product_blocks,
)

# What the runners and the API take from here; the product table, the label and measurement helpers
# live in their own modules and are offered here too.
__all__ = ["DEFAULT_PRODUCTS", "PRODUCTS", "PRODUCT_SUFFIXES", "MeasureOptions", "Parts",
           "ProductPaths", "SinkOptions", "block_data", "block_parts", "label_dtype", "measure_all", "open_sinks", "parse_products",
           "product_blocks", "write_products"]

log = logging.getLogger(__name__)

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
