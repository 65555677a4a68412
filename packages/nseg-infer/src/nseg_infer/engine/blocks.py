"""The block step of a UNet prediction, and the order that streams blocks as their tiles complete.

A block's field is the blend of the tile outputs whose read windows meet its outer window, summed
in tile index order (bitwise the same whatever the batches or the other blocks); its instances are
the nuclei it owns (`block_instances`: each foreground clump is kept only by the block whose core
holds its anchor, the top-left corner of its bounding box; clumps are independent under the
marker-controlled watershed, so any clump that fits inside the margin is labelled exactly as a
one-pass run labels it). An image's labels are its blocks' owned nuclei pasted in block order
(`paste_owned`), each block's numbered after the nuclei of the blocks before it (a prefix sum,
`label_offsets`), so `Predictor.predict`, the cluster's chunk tasks and the tuning fields all
label alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from nseg_infer.engine.blend import UNetMerger
from nseg_infer.engine.instances import InstanceParams, renumber
from nseg_infer.engine.tiling import Block, Tile, TileGrid, cut_by_margin
from nseg_infer.regions import Window

_CONN8 = np.ones((3, 3), dtype=bool)


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


def block_instances(fg: np.ndarray, dist: np.ndarray | None, params: InstanceParams, block: Block,
                    image_shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Instances of `block`: fg/dist cover block.outer; returns (labels over block.outer holding only
    the clumps this block owns, numbered 1..k, number of owned clumps cut by the margin)."""
    labels = params.instances(fg, dist)
    clumps, n = ndi.label(fg > params.fg_threshold, structure=_CONN8)
    if n == 0:
        return labels, 0
    o, c = block.outer, block.core
    own = np.zeros(n + 1, bool)
    cut = 0
    for i, sl in enumerate(ndi.find_objects(clumps), start=1):
        if sl is not None and c.contains(sl[0].start + o.y0, sl[1].start + o.x0):
            own[i] = True
            # A clump cut by the margin is not guaranteed the one-pass labelling.
            cut += cut_by_margin(Window(sl[0].start, sl[0].stop, sl[1].start, sl[1].stop), o, image_shape)
    # Every nucleus lies inside one clump (the instance step stays in the foreground), so the
    # block owns the nuclei of the clumps it owns.
    clump_of = np.zeros(int(labels.max()) + 1, np.intp)
    clump_of[labels] = clumps
    return renumber(labels, own[clump_of]), cut


def field_instances(field: np.ndarray, block: Block, image_shape: tuple[int, int],
                    params: InstanceParams) -> BlockResult:
    """The instance step on one block's field, keeping the nuclei the block owns."""
    labels, cut = block_instances(field[0], field[1] if len(field) > 1 else None, params, block, image_shape)
    return BlockResult(labels, cut)


def label_offsets(counts: Sequence[int]) -> list[int]:
    """Each block's id offset: the nuclei of all blocks before it, in block order."""
    out, total = [], 0
    for n in counts:
        out.append(total)
        total += n
    return out


def paste_owned(canvas: np.ndarray, window: Window, labels: np.ndarray, outer: Window, offset: int) -> None:
    """Paste a block's owned nuclei (`labels` over `outer`, numbered 1..n) into `canvas`, which
    holds `window` of the image, as ids offset + 1..n. Pasting goes in block order and a pixel
    already labelled is never overwritten, so a pixel two blocks claim goes to the earlier one."""
    y0, y1, x0, x1 = max(outer.y0, window.y0), min(outer.y1, window.y1), max(outer.x0, window.x0), min(outer.x1, window.x1)
    if y0 >= y1 or x0 >= x1:
        return
    src = labels[y0 - outer.y0:y1 - outer.y0, x0 - outer.x0:x1 - outer.x0]
    dst = canvas[y0 - window.y0:y1 - window.y0, x0 - window.x0:x1 - window.x0]
    m = (src > 0) & (dst == 0)
    dst[m] = src[m].astype(canvas.dtype) + canvas.dtype.type(offset)


class Paster:
    """Pastes block results into an image-wide canvas in block order (`paste_owned`), numbering
    each block's nuclei after those of the blocks before it (`count`: the running prefix sum)."""

    def __init__(self, canvas: np.ndarray) -> None:
        self.canvas = canvas
        self.window = Window(0, canvas.shape[0], 0, canvas.shape[1])
        self.count = self.cut = 0

    def paste(self, block: Block, result: BlockResult) -> None:
        paste_owned(self.canvas, self.window, result.labels, block.outer, self.count)
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
