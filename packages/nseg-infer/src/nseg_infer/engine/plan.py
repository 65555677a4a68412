"""What an image's prediction is made of, known before the model runs: its `Plan`.

A `Planner` holds what a bundle and the run settings fix (tile, halo, batch, the instance step);
`Planner.plan(source)` adds what one image fixes: the tile grid, the instance blocks
(`tiling.block_grid` with `RunConfig.block` and `margin`, or one block for an image of side <=
block), the whole-image normalisation (low, high) and, when the bundle post-processes by modality,
the inferred modality. Planning reads the image (its normalisation statistics) but never runs the
model: a cluster client plans with a `Planner`, and the `Predictor` (a Planner with a backend)
plans the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nseg_infer.engine.bundle import Bundle
from nseg_infer.engine.config import RunConfig
from nseg_infer.engine.instances import InstanceParams, WatershedParams, check_by_modality, instance_params
from nseg_infer.engine.resize import ResizedImage
from nseg_infer.engine.stats import image_stats
from nseg_infer.engine.tiling import Block, Tile, TileGrid, block_grid, tile_grid
from nseg_infer.regions import ArraySource, ImageSource, Window

# More model tiles than this for one image is a configuration mistake (a 65,536^2 scan in 512 px
# tiles makes 75,000), refused before millions of tile records are built.
MAX_TILES = 1 << 22


def as_source(image: ImageSource | np.ndarray) -> ImageSource:
    return image if isinstance(image, ImageSource) else ArraySource(image)


@dataclass(frozen=True)
class Plan:
    """One image's prediction before the model runs. `norm` is the image's whole-image (low, high);
    the tiles are normalised by `tile_norm`: the same, or the identity for pixels that come
    normalised (a bundle's whole-image resize, `engine.resize.ResizedImage`). The tile grid is derived (`grid`), not stored, so a
    plan sent with each block task of a huge image stays small."""

    shape: tuple[int, int]
    tile: int
    halo: int
    divisor: int
    blocks: tuple[Block, ...]
    norm: tuple[float, float]
    tile_norm: tuple[float, float]
    modality: str | None = None     # inferred only when the bundle post-processes by modality

    @property
    def grid(self) -> TileGrid:
        return tile_grid(*self.shape, self.tile, self.halo, self.divisor)


class Planner:
    """A bundle and the run settings, validated: tile, halo and batch, the instance step (per
    modality), and `plan(source)` for each image. Needs no model."""

    def __init__(self, bundle: Bundle, config: RunConfig) -> None:
        self.bundle, self.config = bundle, config
        b, c = bundle, config
        self.tile = c.tile or b.tiling.tile
        self.halo = b.tiling.halo if c.overlap is None else c.overlap
        self.batch = 1 if b.kind == "maskrcnn" else (c.batch or b.tiling.batch)
        div = b.preprocessing.size_divisor
        if self.tile % div:
            raise ValueError(f"tile {self.tile} must be a multiple of the model's size divisor {div}")
        if 2 * self.halo >= self.tile:
            raise ValueError(f"overlap {self.halo} leaves no core in tile {self.tile}")
        if c.flips and b.kind != "unet":
            raise ValueError(f"test-time flips apply to UNet bundles; {b.path} is a {b.kind!r} bundle")
        self.by_modality: dict[str, InstanceParams] = {}
        if b.kind == "unet":
            self.params: InstanceParams = instance_params(b.postprocessing)
            self.by_modality = {m: instance_params(b.postprocessing, m)
                                for m in check_by_modality(b.postprocessing.get("by_modality"))}
            # The watershed needs foreground and distance; connected components the foreground only.
            self.field_channels = 2 if isinstance(self.params, WatershedParams) else 1

    def check_tiles(self, height: int, width: int) -> None:
        """Refuse an absurd grid (a tiny tile on a huge image) before its tile list is built."""
        core = max(self.tile - 2 * self.halo, 1)
        n = -(-height // core) * -(-width // core)
        if n > MAX_TILES:
            raise ValueError(f"{height} x {width} image in tiles of {self.tile} px (halo {self.halo}) makes {n:,} tiles, "
                             f"above the limit of {MAX_TILES:,}; use a larger --tile or a smaller --overlap")

    def grid(self, height: int, width: int) -> TileGrid:
        self.check_tiles(height, width)
        return tile_grid(height, width, self.tile, self.halo, self.bundle.preprocessing.size_divisor)

    def blocks(self, height: int, width: int) -> tuple[Block, ...]:
        """The instance blocks: one for an image of side <= `RunConfig.block`, else `block_grid`."""
        c = self.config
        if max(height, width) <= c.block:
            whole = Window(0, height, 0, width)
            return (Block(0, whole, whole),)
        return block_grid(height, width, c.block, c.margin)

    def plan(self, source: ImageSource) -> Plan:
        """The image's plan (see the module docstring): one read of the whole image (or of its
        regular subsample, for a region reader) for the statistics."""
        h, w = source.shape
        resize = self.bundle.preprocessing.resize
        if resize is not None and not isinstance(source, ResizedImage):
            # The model was trained on whole images resized to one square, which `engine.resize`
            # does before the Predictor sees a pixel.
            raise ValueError(f"{source.path}: this model sees whole images resized to {resize} x {resize}; give the "
                             "Predictor `runners.prepare.model_input(bundle, source).source`")
        if self.bundle.kind == "unet":  # the detector's fixed tiles are `maskrcnn_tiles`
            self.check_tiles(h, w)
        if isinstance(source, ResizedImage):
            norm, tile_norm, modality = source.norm, (0.0, 1.0), source.modality
        else:
            lo, hi, modality = image_stats(source, self.bundle.preprocessing.normalization,
                                           modality=bool(self.by_modality))
            norm = tile_norm = (lo, hi)
        return Plan((h, w), self.tile, self.halo, self.bundle.preprocessing.size_divisor, self.blocks(h, w),
                    norm, tile_norm, modality if self.by_modality else None)

    def params_for(self, modality: str | None) -> InstanceParams:
        """The instance step for an image of `modality` (the bundle's `by_modality`, else its base)."""
        return self.by_modality.get(modality or "", self.params)

    def modality(self, image: ImageSource | np.ndarray) -> str:
        """The modality the runtime infers for `image` (fluorescence, brightfield or histology),
        which picks a bundle's `by_modality` post-processing."""
        source = as_source(image)
        if isinstance(source, ResizedImage):
            return source.modality
        return image_stats(source, self.bundle.preprocessing.normalization, modality=True)[2]

    def maskrcnn_tiles(self, height: int, width: int) -> list[Tile]:
        """The detector graph takes one fixed-size tile: the balanced grid's read windows (often
        smaller than the tile) grow to the full tile at the bottom and right, zero-padded past the
        image, and small images are padded to a full tile."""
        t = self.tile
        grid = tile_grid(max(height, t - 2 * self.halo), max(width, t - 2 * self.halo), t, self.halo,
                         self.bundle.preprocessing.size_divisor)
        return [Tile(g.index, Window(g.read.y0, g.read.y0 + t, g.read.x0, g.read.x0 + t), g.core.clip(height, width))
                for g in grid.tiles if g.core.y0 < height and g.core.x0 < width]
