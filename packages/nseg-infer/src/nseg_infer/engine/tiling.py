"""The tile grid: a pure function of (image size, tile, halo, size divisor).

Each tile has a fixed-size read window (so tiles batch), which may reach past the image edge
(filled by reflection, exactly as an untiled run pads the whole image), and a core window: the
cores partition the image, so every pixel and every detected object has exactly one
responsible tile. Blocks are the same idea one level up, for instance extraction on images too
large for one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nseg_infer.regions import Window


@dataclass(frozen=True)
class Tile:
    index: int
    read: Window   # what the model sees; may extend beyond the image
    core: Window   # the pixels (and objects) this tile is responsible for; inside the image


@dataclass(frozen=True)
class TileGrid:
    height: int
    width: int
    tile_shape: tuple[int, int]
    halo: int
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)


def _round_up(n: int, d: int) -> int:
    return -(-n // d) * d


def _axis(n: int, tile: int, halo: int, divisor: int) -> tuple[int, list[tuple[int, int, int]]]:
    """(read size, [(read_start, core_start, core_end)]) along one axis."""
    if n < 1:
        raise ValueError(f"image side must be >= 1, got {n}")
    core = tile - 2 * halo
    if n <= core:
        # Smaller than one core: one tile just big enough, not a whole mostly-empty tile.
        size = min(tile, _round_up(n + 2 * halo, divisor))
        return size, [(-halo, 0, n)]
    count = math.ceil(n / core)
    # Balance the cores: as few tiles as the maximum size allows, each only as big as needed.
    # A 2048 side with 1024 tiles then reads 3 x 752 pixels instead of 3 x 1024. Cores stay
    # multiples of the divisor (the network's total stride), so every tile sees the image on the
    # same pooling grid and overlapping tiles predict alike.
    core = min(core, _round_up(math.ceil(n / count), divisor))
    size = min(tile, _round_up(core + 2 * halo, divisor))
    out = []
    for i in range(count):
        c0, c1 = i * core, min((i + 1) * core, n)
        # The last read window is pulled back to end one halo past the image, so it wastes no
        # compute on padding; its core stays at least one halo from its read edges.
        r0 = c0 - halo if i < count - 1 else n + halo - size
        out.append((r0, c0, c1))
    return size, out


def tile_grid(height: int, width: int, tile: int, halo: int, divisor: int = 1) -> TileGrid:
    if tile % divisor:
        raise ValueError(f"tile {tile} must be a multiple of the model's size divisor {divisor}")
    if halo < 0 or 2 * halo >= tile:
        raise ValueError(f"halo {halo} must satisfy 0 <= 2*halo < tile ({tile})")
    sy, ys = _axis(height, tile, halo, divisor)
    sx, xs = _axis(width, tile, halo, divisor)
    tiles = []
    for ry, cy0, cy1 in ys:
        for rx, cx0, cx1 in xs:
            tiles.append(Tile(len(tiles), Window(ry, ry + sy, rx, rx + sx), Window(cy0, cy1, cx0, cx1)))
    return TileGrid(height, width, (sy, sx), halo, tuple(tiles))


@dataclass(frozen=True)
class Block:
    index: int
    core: Window    # instances anchored here belong to this block
    outer: Window   # core plus margin, clipped to the image: what instance extraction sees


def cut_by_margin(box: Window, outer: Window, image_shape: tuple[int, int]) -> bool:
    """Whether an object whose bounding box `box` (in `outer`'s coordinates) touches the edge of
    the window `outer` where that edge is not the image's: it may continue outside the window, so
    what a block sees of it may differ from a one-pass result."""
    h, w = image_shape
    return ((box.y0 == 0 and outer.y0 > 0) or (box.x0 == 0 and outer.x0 > 0)
            or (box.y1 == outer.y1 - outer.y0 and outer.y1 < h) or (box.x1 == outer.x1 - outer.x0 and outer.x1 < w))


def block_grid(height: int, width: int, block: int, margin: int) -> tuple[Block, ...]:
    if block < 1 or margin < 0:
        raise ValueError(f"block must be >= 1 and margin >= 0, got {block}, {margin}")
    blocks = []
    for y0 in range(0, height, block):
        for x0 in range(0, width, block):
            core = Window(y0, min(y0 + block, height), x0, min(x0 + block, width))
            outer = Window(core.y0 - margin, core.y1 + margin, core.x0 - margin, core.x1 + margin).clip(height, width)
            blocks.append(Block(len(blocks), core, outer))
    return tuple(blocks)
