"""The block step of a UNet prediction, and the order that streams blocks as their tiles complete.

A block's field is the blend of the tile outputs whose read windows meet its outer window, summed
in tile index order (bitwise the same whatever the batches or the other blocks); its instances are
the nuclei it owns (`stitch.block_instances`: the margin ownership rule). An image's labels are its
blocks' owned nuclei pasted in block order, each block's numbered after the nuclei of the blocks
before it (a prefix sum), so `Predictor.predict`, the cluster's block tasks and the tuning fields
all label alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nseg_infer.engine.instances import InstanceParams
from nseg_infer.engine.stitch import UNetMerger, block_instances, paste_block
from nseg_infer.engine.tiling import Block, Tile, TileGrid


@dataclass(frozen=True)
class BlockResult:
    """The nuclei one block owns: `labels` over `block.outer`, numbered 1..n (0 elsewhere), and
    how many of them the margin cuts (clumps larger than it: possibly not the one-pass labels)."""

    labels: np.ndarray
    cut: int

    @property
    def n(self) -> int:
        return int(self.labels.max(initial=0))


def block_tiles(grid: TileGrid, block: Block) -> list[int]:
    """Indices of the tiles whose read windows meet the block's outer window, in index order."""
    return [t.index for t in grid.tiles if t.read.intersects(block.outer)]


def block_field(grid: TileGrid, block: Block, outputs: Mapping[int, np.ndarray], channels: int,
                ids: Sequence[int] | None = None) -> np.ndarray:
    """[C, h, w] blended field over `block.outer` from the [C, th, tw] outputs of its tiles (`ids`:
    `block_tiles(grid, block)`, when the caller has them)."""
    merger = UNetMerger(grid, block.outer, channels)
    for i in block_tiles(grid, block) if ids is None else ids:  # index order: bitwise-identical sums
        merger.aggregate(outputs[i][None], [grid.tiles[i]])
    return merger.finalize()


def field_instances(field: np.ndarray, block: Block, image_shape: tuple[int, int],
                    params: InstanceParams) -> BlockResult:
    """The instance step on one block's field, keeping the nuclei the block owns."""
    labels, cut = block_instances(field[0], field[1] if len(field) > 1 else None, params, block, image_shape)
    return BlockResult(labels, cut)


class Paster:
    """Pastes block results into an image-wide canvas in block order, numbering each block's nuclei
    after those of the blocks before it."""

    def __init__(self, canvas: np.ndarray) -> None:
        self.canvas = canvas
        self.count = self.cut = 0

    def paste(self, block: Block, result: BlockResult) -> None:
        paste_block(self.canvas, result.labels, block.outer, self.count)
        self.count += result.n
        self.cut += result.cut


def stream_order(grid: TileGrid, blocks: Sequence[Block]) -> tuple[list[Tile], list[list[int]], dict[int, int]]:
    """Tiles in the order blocks first need them, each block's tile indices, and for each tile the
    last block needing it (when its output can be dropped)."""
    need: list[list[int]] = []
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for b in blocks:
        ids = block_tiles(grid, b)
        need.append(ids)
        for i in ids:
            first.setdefault(i, b.index)
            last[i] = b.index
    order = sorted(first, key=lambda i: (first[i], i))
    return [grid.tiles[i] for i in order], need, last


class BlockStream:
    """Takes tile outputs in `stream_order` and calls `on_block(block, field)` for each block, in
    block order, as soon as all its tiles are in; a tile's output is dropped after its last block."""

    def __init__(self, grid: TileGrid, blocks: Sequence[Block], channels: int,
                 on_block: Callable[[Block, np.ndarray], None]) -> None:
        self.grid, self.blocks, self.channels, self.on_block = grid, blocks, channels, on_block
        self.order, self.need, self.last = stream_order(grid, blocks)
        self.cache: dict[int, np.ndarray] = {}
        self.next = 0

    def add(self, items: Iterable[tuple[Tile, np.ndarray]]) -> None:
        for tile, out in items:
            self.cache[tile.index] = out
        while self.next < len(self.blocks) and all(i in self.cache for i in self.need[self.next]):
            b = self.blocks[self.next]
            self.on_block(b, block_field(self.grid, b, self.cache, self.channels, self.need[b.index]))
            for i in self.need[b.index]:
                if self.last[i] == b.index:
                    del self.cache[i]
            self.next += 1

    def check_done(self) -> None:
        if self.next != len(self.blocks):
            raise RuntimeError("internal error: not every block was finished")
