"""The whole pipeline, as functions and one `Predictor` object a test (or a folder watcher) can drive.

    read (by region) -> whole-image norm stats [-> resize] -> tile grid -> model (batched) -> merge
        -> instances [-> labels resized back] -> outputs

The Predictor's public API: `predict(image)` (one image, labels in memory, or in a `canvas` the
caller owns: a `with predictor.canvas(shape, work_dir=...)` block that holds the disk-backed label
canvas of a large image and removes its temp file when the block ends, also on error),
`predict_many(images)` (many small images whose tiles share model calls), `probabilities` and
`instances` (the UNet field and the instance step on it, for tuning), `detections` and
`maskrcnn_merger` (the same for Mask R-CNN). Files, products and batches of files are the file
runner's (`nseg_infer.runners.files`).

Three stages overlap through bounded queues: a reader thread reads, normalises and batches tiles;
the calling thread runs the model (ONNX Runtime and TensorRT release the GIL); a merger thread
blends outputs and extracts instances block by block. The queues are short, so memory stays
bounded and the model is fed while the CPU stages work. `process_many` overlaps files the same
way (the same `stages`): the next file is opened while this one is segmented and the previous
one's products are written.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nseg_data.atomic import WriteFailed
from nseg_data.modality import infer_modality

from nseg_infer.engine.backends import DEVICES, Backend, FlipAverage, create_backend
from nseg_infer.engine.bundle import Bundle, load_bundle
from nseg_infer.engine.instances import InstanceParams, WatershedParams, check_by_modality, instance_params
from nseg_infer.engine.preprocess import Normalization, apply_norm, as_rgb, norm_stats, resize_image
from nseg_infer.engine.stages import Worker, background
from nseg_infer.engine.stitch import MaskRCNNMerger, UNetMerger, block_instances, paste_block
from nseg_infer.engine.tiling import Block, Tile, TileGrid, Window, block_grid, tile_grid
from nseg_infer.sinks.outputs import (
    DEFAULT_PRODUCTS,
    parse_products,
)
from nseg_infer.sources.channels import ChannelChoice
from nseg_infer.sources.imageio import MAX_PIXELS, REGION_THRESHOLD_PX, ArraySource, ImageSource
from nseg_infer.sources.prepare import (
    InputOptions,
)
from nseg_infer.sources.scale import labels_to_input

log = logging.getLogger(__name__)

# More model tiles than this for one image is a configuration mistake (a 65,536^2 scan in 512 px
# tiles makes 75,000), refused before millions of tile records are built.
MAX_TILES = 1 << 22


@dataclass(frozen=True)
class RunConfig:
    """Runtime settings; None means "from the bundle's metadata"."""

    tile: int | None = None
    overlap: int | None = None      # the halo, in pixels, on each side of a tile core
    batch: int | None = None
    device: str = "auto"
    block: int = 2048               # instance and product block of larger images: bounds peak memory
    margin: int = 128               # block margin: nuclei clumps up to this size are seamless
    large_px: int = 8192 * 8192     # above: labels on disk (memmap) and a tiled BigTIFF
    region_px: int = REGION_THRESHOLD_PX  # above: TIFFs are read window by window
    max_pixels: int = MAX_PIXELS    # above: an input is refused from its header, before decoding
    overview_side: int = 4096       # overlay longest side for large images
    threads: int | None = None
    queue_depth: int = 3
    channel: int | None = None      # the nuclear channel of a multichannel image (0-based)
    channels: tuple[int, ...] | None = None  # or up to three channels onto the model's R, G, B
    pixel_size: float | None = None  # µm per pixel, overriding the file's metadata
    diameter: float | None = None   # typical nucleus diameter (px) in the input: rescale to the model's
    products: tuple[str, ...] = DEFAULT_PRODUCTS
    flips: bool = False             # UNet test-time flips: about 4x slower, a little more accurate

    def __post_init__(self) -> None:
        object.__setattr__(self, "products", parse_products(self.products))
        # "0,2,1" from a command line or a sequence from Python: a validated tuple either way.
        object.__setattr__(self, "channels", self.input_options.choice.channels)
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        for name in ("tile", "batch"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.overlap is not None and self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}")
        if self.block < 64 or self.margin < 0 or self.queue_depth < 1:
            raise ValueError("block must be >= 64, margin >= 0 and queue_depth >= 1")
        if self.large_px < 1 or self.region_px < 1 or self.overview_side < 64:
            raise ValueError("large_px and region_px must be >= 1 and overview_side >= 64")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")

    @property
    def input_options(self) -> InputOptions:
        return InputOptions(ChannelChoice.parse(self.channel, self.channels), self.pixel_size, self.diameter)


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray          # HxW uint32 at the image's size (in memory, or the caller's canvas)
    max_label: int
    scores: np.ndarray | None   # Mask R-CNN: scores[k] is the score of label k + 1
    norm: tuple[float, float]   # the image's (low, high) normalisation
    cut_clumps: int = 0         # UNet clumps larger than the block margin (possibly not seamless)


@dataclass(frozen=True)
class _Input:
    """What the tiles of one image are read from: the image, or for a `resize` bundle the whole
    image normalised and resized (then `tile_norm` is the identity)."""

    source: ImageSource
    tile_norm: tuple[float, float]
    norm: tuple[float, float]
    resized: bool
    modality: str | None = None  # inferred only when the bundle post-processes by modality


@dataclass(frozen=True)
class BlockInputs:
    """Whole-image settings every instance block of one image shares (`Predictor.block_inputs`)."""

    norm: tuple[float, float]       # the tile normalisation (low, high)
    modality: str | None = None


# ----------------------------------------------------------------------------------------------
# Pure helpers


NORM_SAMPLE_PX = 4_000_000


def image_sample(src: ImageSource, *, max_pixels: int = NORM_SAMPLE_PX) -> np.ndarray:
    """HxWx3 pixels the whole-image statistics come from: the image itself, or for a region reader
    the regular subsample that `norm_stats` would take of it, gathered band by band, so a huge TIFF
    gets exactly the statistics of its in-memory twin."""
    if not src.is_region_reader:
        return as_rgb(src.read_all(), source=str(src.path))
    h, w = src.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
    rows = []
    band = max(step, (1024 // step) * step)
    for y0 in range(0, h, band):
        part = src.read(Window(y0, min(y0 + band, h), 0, w))
        rows.append(as_rgb(part[::step, ::step]))
    return np.concatenate(rows, axis=0)


def image_stats(src: ImageSource, norm: Normalization, *, modality: bool = False) -> tuple[float, float, str | None]:
    """(low, high) of `preprocess.norm_stats` over the whole image (see `image_sample`) and, when
    asked, the image's modality (`sample_modality`), both from one read of the sample."""
    sample = image_sample(src)
    lo, hi = norm_stats(sample, norm, max_pixels=NORM_SAMPLE_PX)
    return lo, hi, sample_modality(sample, lo, hi) if modality else None


def sample_modality(sample: np.ndarray, lo: float, hi: float) -> str:
    """`nseg_data.modality.infer_modality` of an `image_sample`: 8-bit pixels as they are (as the
    data set's splits classify them), deeper ones stretched to 8 bits by the image's normalisation."""
    if sample.dtype != np.uint8:
        sample = (np.clip((sample.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    return str(infer_modality(sample))


def read_tile(src: ImageSource, tile: Tile, lo: float, hi: float, *, bgr: bool = False,
              pad_mode: str = "reflect") -> np.ndarray:
    """HxWx3 float32 normalised read window; parts outside the image are reflected (as an untiled
    run pads the whole image) or zero for detectors, where mirrored nuclei would be detected."""
    r = tile.read
    v = r.clip(*src.shape)
    x = apply_norm(as_rgb(src.read(v), source=str(src.path)), lo, hi)
    if bgr:
        x = x[..., ::-1]
    pads = ((v.y0 - r.y0, r.y1 - v.y1), (v.x0 - r.x0, r.x1 - v.x1), (0, 0))
    if any(p for pp in pads for p in pp):
        x = np.pad(x, pads, mode=pad_mode) if pad_mode == "reflect" else np.pad(x, pads)
    return x


def _batches(src: ImageSource, tiles: Sequence[Tile], batch: int, lo: float, hi: float, bgr: bool,
             pad_mode: str) -> Iterator[tuple[list[Tile], np.ndarray]]:
    for i in range(0, len(tiles), batch):
        chunk = list(tiles[i:i + batch])
        x = np.stack([read_tile(src, t, lo, hi, bgr=bgr, pad_mode=pad_mode) for t in chunk])
        yield chunk, np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _schedule(grid: TileGrid, blocks: Sequence[Block]) -> tuple[list[Tile], list[list[int]], dict[int, int]]:
    """Tiles in the order blocks first need them, each block's tile indices, and for each tile the
    last block needing it (when its output can be dropped)."""
    need: list[list[int]] = []
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for b in blocks:
        ids = [t.index for t in grid.tiles if t.read.intersects(b.outer)]
        need.append(ids)
        for i in ids:
            first.setdefault(i, b.index)
            last[i] = b.index
    order = sorted(first, key=lambda i: (first[i], i))
    return [grid.tiles[i] for i in order], need, last


def _as_source(image: ImageSource | np.ndarray) -> ImageSource:
    return image if isinstance(image, ImageSource) else ArraySource(image)


# ----------------------------------------------------------------------------------------------
# The predictor


class Predictor:
    """Made once per bundle + device; then `predict`, `predict_many` and the block and field
    methods (see the module docstring)."""

    def __init__(self, bundle: Bundle | str | os.PathLike | None = None, config: RunConfig | None = None, *,
                 backend: Backend | None = None) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.config = config or RunConfig()
        b, c = self.bundle, self.config
        self.tile = c.tile or b.tiling.tile
        self.halo = b.tiling.halo if c.overlap is None else c.overlap
        self.batch = 1 if b.kind == "maskrcnn" else (c.batch or b.tiling.batch)
        div = b.preprocessing.size_divisor
        if self.tile % div:
            raise ValueError(f"tile {self.tile} must be a multiple of the model's size divisor {div}")
        if 2 * self.halo >= self.tile:
            raise ValueError(f"overlap {self.halo} leaves no core in tile {self.tile}")
        self.backend = backend or create_backend(b, c.device, threads=c.threads)
        if c.flips:
            if b.kind != "unet":
                raise ValueError(f"test-time flips apply to UNet bundles; {b.path} is a {b.kind!r} bundle")
            self.backend = FlipAverage(self.backend)
        self.backend_name = getattr(self.backend, "name", type(self.backend).__name__)
        self.output_name = b.outputs[0].name
        self.by_modality: dict[str, InstanceParams] = {}
        if b.kind == "unet":
            self.params: InstanceParams = instance_params(b.postprocessing)
            self.by_modality = {m: instance_params(b.postprocessing, m)
                                for m in check_by_modality(b.postprocessing.get("by_modality"))}
            # The watershed needs foreground and distance; connected components the foreground only.
            self.field_channels = 2 if isinstance(self.params, WatershedParams) else 1
        if c.diameter is not None and b.scale.nucleus_diameter_px is None:
            raise ValueError(f"--diameter needs a model that records its training scale; {b.path / 'metadata.json'} "
                             "has no 'scale': {'nucleus_diameter_px': ...}")

    # -- prediction ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def canvas(self, shape: tuple[int, int], *, work_dir: Path | None = None) -> Iterator[np.ndarray]:
        """A zeroed HxW uint32 label canvas for `predict(..., labels=canvas)`, valid inside the
        `with` block. Above `RunConfig.large_px` pixels it is a memmap on a hidden temp file in
        `work_dir` (default: the system's temp folder), removed when the block ends, on error too:
        the labels of a 40k x 40k scan would not fit in memory."""
        h, w = shape
        if h * w <= self.config.large_px:
            yield np.zeros((h, w), np.uint32)
            return
        try:
            fd, name = tempfile.mkstemp(prefix=".nseg-canvas.", suffix=".tmp", dir=work_dir)
        except OSError as e:
            raise WriteFailed(Path(work_dir or tempfile.gettempdir()) / ".nseg-canvas", e) from e
        try:
            # Reserve the space now: a memmap that hits a full disk later dies of SIGBUS instead
            # of raising. File systems without fallocate (some network shares) skip this.
            os.posix_fallocate(fd, 0, h * w * 4)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                os.close(fd)
                Path(name).unlink(missing_ok=True)
                raise WriteFailed(name, e) from e
        os.close(fd)
        try:
            yield np.memmap(name, dtype=np.uint32, mode="w+", shape=(h, w))
        finally:
            Path(name).unlink(missing_ok=True)

    def predict(self, image: ImageSource | np.ndarray, *, labels: np.ndarray | None = None) -> Prediction:
        """Labels of one image, written into `labels` (a zeroed HxW uint32 array, e.g. a `canvas`)
        or into a new in-memory array."""
        src = _as_source(image)
        return self._predict(src, self._input(src), labels)

    def predict_many(self, images: Sequence[ImageSource | np.ndarray]) -> list[Prediction]:
        """`predict` of each image, labels in memory, in order. A UNet's tiles of every image that
        is one instance block (side <= `RunConfig.block`) are packed into shared model calls of up
        to `batch` tiles, so many small images cost a few batched calls; each image still gets
        exactly `predict`'s labels. The detector graph takes one tile per call: a plain loop."""
        srcs = [_as_source(i) for i in images]
        if self.bundle.kind != "unet":
            return [self.predict(s) for s in srcs]
        inputs = [self._input(s) for s in srcs]
        grids = {k: self._grid(*inp.source.shape) for k, inp in enumerate(inputs)
                 if max(inp.source.shape) <= self.config.block}
        # Tiles of one shape share calls; within a shape, images and tiles keep their order.
        by_shape: dict[tuple[int, int], list[tuple[int, Tile]]] = {}
        for k, grid in grids.items():
            by_shape.setdefault(grid.tile_shape, []).extend((k, t) for t in grid.tiles)
        bgr = self.bundle.preprocessing.channel_order == "BGR"

        def batches() -> Iterator[tuple[list[tuple[int, Tile]], np.ndarray]]:
            for items in by_shape.values():
                for i in range(0, len(items), self.batch):
                    chunk = items[i:i + self.batch]
                    x = np.stack([read_tile(inputs[k].source, t, *inputs[k].tile_norm, bgr=bgr) for k, t in chunk])
                    yield chunk, np.ascontiguousarray(x.transpose(0, 3, 1, 2))

        outputs: dict[int, dict[int, np.ndarray]] = {k: {} for k in grids}

        def sink(item: tuple[list[tuple[int, Tile]], dict[str, np.ndarray]]) -> None:
            chunk, out = item
            for (k, t), p in zip(chunk, out[self.output_name], strict=True):
                outputs[k][t.index] = np.asarray(p[:self.field_channels], np.float32)

        self._run_model(batches(), sink)
        preds = []
        for k, (src, inp) in enumerate(zip(srcs, inputs, strict=True)):
            if k not in grids:
                preds.append(self._predict(src, inp, None))
                continue
            h, w = inp.source.shape
            whole = Block(0, Window(0, h, 0, w), Window(0, h, 0, w))
            canvas = np.zeros(src.shape, np.uint32)
            target = np.zeros((h, w), np.uint32) if inp.resized else canvas
            n, _ = self._block_labels(grids[k], whole, outputs.pop(k), range(len(grids[k])), target, 0,
                                      self._params_for(inp.modality))
            preds.append(self._at_input(canvas, target, n, None, inp, 0))
        return preds

    def _input(self, src: ImageSource) -> _Input:
        pre = self.bundle.preprocessing
        lo, hi, modality = image_stats(src, pre.normalization, modality=bool(self.by_modality))
        if pre.resize is None:
            return _Input(src, (lo, hi), (lo, hi), False, modality)
        # Normalised, then resized, as training prepares its images (a whole-image read).
        x = resize_image(apply_norm(as_rgb(src.read_all(), source=str(src.path)), lo, hi), pre.resize)
        return _Input(ArraySource(x, src.path), (0.0, 1.0), (lo, hi), True, modality)

    def _params_for(self, modality: str | None) -> InstanceParams:
        return self.by_modality.get(modality or "", self.params)

    def modality(self, image: ImageSource | np.ndarray) -> str:
        """The modality the runtime infers for `image` (fluorescence, brightfield or histology),
        which picks a bundle's `by_modality` post-processing."""
        return image_stats(_as_source(image), self.bundle.preprocessing.normalization, modality=True)[2]

    def _predict(self, src: ImageSource, inp: _Input, labels: np.ndarray | None) -> Prediction:
        canvas = np.zeros(src.shape, np.uint32) if labels is None else labels
        if canvas.shape != src.shape:
            raise ValueError(f"{src.path}: labels canvas {canvas.shape} is not the image's shape {src.shape}")
        target = np.zeros(inp.source.shape, np.uint32) if inp.resized else canvas
        if self.bundle.kind == "unet":
            n, cut = self._predict_unet(inp.source, *inp.tile_norm, target, self._params_for(inp.modality))
            return self._at_input(canvas, target, n, None, inp, cut)
        scores = self._predict_maskrcnn(inp.source, *inp.tile_norm, target)
        return self._at_input(canvas, target, len(scores), scores, inp, 0)

    @staticmethod
    def _at_input(canvas: np.ndarray, model_labels: np.ndarray, n: int, scores: np.ndarray | None, inp: _Input,
                  cut: int) -> Prediction:
        if model_labels is not canvas:  # resized for the model: nearest neighbour back, renumbered
            n, scores = labels_to_input(model_labels, canvas, scores)
        return Prediction(canvas, n, scores, inp.norm, cut)

    def probabilities(self, image: ImageSource | np.ndarray) -> np.ndarray:
        """A UNet bundle's blended [C, H, W] field (foreground, and distance for the watershed)
        before the instance step, at the model's size (the bundle's `resize`, else the image's),
        exactly as `predict` computes it for an image of one block; `instances` turns it into
        `predict`'s labels and `nseg-train tune` searches the instance parameters on it. Holds the
        whole field in memory."""
        if self.bundle.kind != "unet":
            raise ValueError(f"probabilities need a UNet bundle, this one is {self.bundle.kind!r}")
        inp = self._input(_as_source(image))
        h, w = inp.source.shape
        grid = self._grid(h, w)
        merger = UNetMerger(grid, Window(0, h, 0, w), self.field_channels)

        def sink(item: tuple[list[Tile], dict[str, np.ndarray]]) -> None:
            tiles, out = item
            for t, p in zip(tiles, out[self.output_name], strict=True):  # index order, as in predict
                merger.aggregate(np.asarray(p[:self.field_channels], np.float32)[None], [t])

        bgr = self.bundle.preprocessing.channel_order == "BGR"
        self._run_model(_batches(inp.source, grid.tiles, self.batch, *inp.tile_norm, bgr, "reflect"), sink)
        return merger.finalize()

    def instances(self, field: np.ndarray, shape: tuple[int, int], *, modality: str | None = None,
                  **overrides: float) -> np.ndarray:
        """The instance step on a `probabilities` field, with the bundle's post-processing for the
        image's `modality` (or `overrides` of it: what `nseg-train tune` searches), as labels at
        the image's `shape`."""
        params = instance_params({**self.bundle.postprocessing, **overrides}, modality)
        labels = params.instances(field[0], field[1] if len(field) > 1 else None)
        if labels.shape == tuple(shape):
            return labels
        out = np.zeros(shape, np.uint32)
        labels_to_input(labels, out)
        return out

    def _grid(self, h: int, w: int) -> TileGrid:
        # An absurd grid (a tiny tile on a huge image) is refused before its tile list is built.
        core = max(self.tile - 2 * self.halo, 1)
        n = -(-h // core) * -(-w // core)
        if n > MAX_TILES:
            raise ValueError(f"{h} x {w} image in tiles of {self.tile} px (halo {self.halo}) makes {n:,} tiles, above "
                             f"the limit of {MAX_TILES:,}; use a larger --tile or a smaller --overlap")
        return tile_grid(h, w, self.tile, self.halo, self.bundle.preprocessing.size_divisor)

    def _run_model(self, batches: Iterable[tuple[list[Tile], np.ndarray]], sink: Callable) -> None:
        worker = Worker(sink, self.config.queue_depth)
        try:
            for tiles, x in background(batches, self.config.queue_depth):
                out = self.backend.run(x)
                worker.put((tiles, out))
        finally:
            worker.close()

    def _predict_unet(self, src: ImageSource, lo: float, hi: float, canvas: np.ndarray,
                      params: InstanceParams) -> tuple[int, int]:
        h, w = src.shape
        grid = self._grid(h, w)
        c = self.config
        if max(h, w) <= c.block:
            blocks: Sequence[Block] = (Block(0, Window(0, h, 0, w), Window(0, h, 0, w)),)
        else:
            blocks = block_grid(h, w, c.block, c.margin)
        order, need, last = _schedule(grid, blocks)
        state = {"count": 0, "cut": 0, "next": 0}
        cache: dict[int, np.ndarray] = {}

        def finish_ready_blocks() -> None:
            while state["next"] < len(blocks) and all(i in cache for i in need[state["next"]]):
                b = blocks[state["next"]]
                n, cut = self._block_labels(grid, b, cache, need[b.index], canvas, state["count"], params)
                state["count"] += n
                state["cut"] += cut
                for i in need[b.index]:
                    if last[i] == b.index:
                        del cache[i]
                state["next"] += 1

        def sink(item: tuple[list[Tile], dict[str, np.ndarray]]) -> None:
            tiles, out = item
            probs = out[self.output_name]
            for t, p in zip(tiles, probs, strict=True):
                cache[t.index] = np.asarray(p[:self.field_channels], np.float32)
            finish_ready_blocks()

        bgr = self.bundle.preprocessing.channel_order == "BGR"
        self._run_model(_batches(src, order, self.batch, lo, hi, bgr, "reflect"), sink)
        if state["next"] != len(blocks):
            raise RuntimeError("internal error: not every block was finished")
        if state["cut"]:
            log.warning("%s: %d foreground clumps exceed the block margin (%d px); they may differ from a "
                        "one-pass result", src.path, state["cut"], c.margin)
        return state["count"], state["cut"]

    def _block_labels(self, grid: TileGrid, block: Block, outputs: dict[int, np.ndarray], ids: Iterable[int],
                      canvas: np.ndarray, offset: int, params: InstanceParams) -> tuple[int, int]:
        """Blend the tile outputs `ids` over one block, take its instances, paste them into
        `canvas` numbered from offset + 1; returns (instances pasted, clumps cut by the margin)."""
        lab, cut = self._block_instances(grid, block, outputs, ids, params)
        paste_block(canvas, lab, block.outer, offset)
        return int(lab.max()), cut

    def _block_instances(self, grid: TileGrid, block: Block, outputs: dict[int, np.ndarray], ids: Iterable[int],
                         params: InstanceParams) -> tuple[np.ndarray, int]:
        """(labels over block.outer holding only the clumps this block owns, numbered 1..n; owned
        clumps cut by the margin): the tile outputs `ids` blended over the block, then the instance
        step. Shared by `predict` and `block_labels` (the cluster path), so both label alike."""
        merger = UNetMerger(grid, block.outer, self.field_channels)
        for i in ids:  # index order: bitwise-identical sums whatever the blocks or the batches
            merger.aggregate(outputs[i][None], [grid.tiles[i]])
        f = merger.finalize()
        return block_instances(f[0], f[1] if len(f) > 1 else None, params, block, (grid.height, grid.width))

    # -- one instance block at a time (the cluster path, `nseg_infer.runners.blocks_dask`) ---------------

    def block_inputs(self, image: ImageSource | np.ndarray) -> BlockInputs:
        """What every block of a large image shares, computed once over the whole image as
        `predict` computes it: the tile normalisation and the inferred modality (which picks a
        `by_modality` post-processing). UNet bundles without `resize` only."""
        if self.bundle.kind != "unet":
            raise ValueError(f"block-wise prediction needs a UNet bundle, this one is {self.bundle.kind!r}")
        inp = self._input(_as_source(image))
        if inp.resized:
            raise ValueError("block-wise prediction is not possible with a bundle that resizes the whole image")
        return BlockInputs(inp.tile_norm, inp.modality)

    def block_labels(self, image: ImageSource | np.ndarray, block: Block, inputs: BlockInputs) -> tuple[np.ndarray, int]:
        """One instance block of `image` on its own, exactly as `predict` labels it: the model on
        the tiles whose read windows meet `block.outer`, blended in index order, then the instance
        step with the margin ownership rule. Returns (labels over `block.outer` holding the nuclei
        the block owns, numbered 1..n; clumps cut by the margin). `predict`'s labels are these
        pasted with `stitch.paste_block` in block order (`tiling.block_grid`), each offset by the
        sum of n over the blocks before it."""
        src = _as_source(image)
        grid = self._grid(*src.shape)
        ids = [t.index for t in grid.tiles if t.read.intersects(block.outer)]  # as _schedule
        outputs: dict[int, np.ndarray] = {}

        def sink(item: tuple[list[Tile], dict[str, np.ndarray]]) -> None:
            tiles, out = item
            for t, p in zip(tiles, out[self.output_name], strict=True):
                outputs[t.index] = np.asarray(p[:self.field_channels], np.float32)

        bgr = self.bundle.preprocessing.channel_order == "BGR"
        self._run_model(_batches(src, [grid.tiles[i] for i in ids], self.batch, *inputs.norm, bgr, "reflect"), sink)
        return self._block_instances(grid, block, outputs, ids, self._params_for(inputs.modality))

    def _maskrcnn_tiles(self, h: int, w: int) -> list[Tile]:
        # The detector graph takes one fixed-size tile: the balanced grid's read windows (often
        # smaller than the tile) grow to the full tile at the bottom and right, zero-padded past
        # the image, and small images are padded to a full tile.
        t = self.tile
        grid = tile_grid(max(h, t - 2 * self.halo), max(w, t - 2 * self.halo), t, self.halo,
                         self.bundle.preprocessing.size_divisor)
        return [Tile(g.index, Window(g.read.y0, g.read.y0 + t, g.read.x0, g.read.x0 + t), g.core.clip(h, w))
                for g in grid.tiles if g.core.y0 < h and g.core.x0 < w]

    def maskrcnn_merger(self, canvas: np.ndarray, **overrides: float) -> MaskRCNNMerger:
        """The merger `predict` uses, with the bundle's post-processing (or `overrides` of
        score_threshold, mask_threshold, nms_threshold, min_size: what `nseg-train tune` searches)."""
        pp = {"score_threshold": 0.5, "mask_threshold": 0.5, "nms_threshold": 0.5, "min_size": 0,
              **{k: v for k, v in self.bundle.postprocessing.items() if k != "kind"}, **overrides}
        return MaskRCNNMerger(canvas, score_threshold=float(pp["score_threshold"]),
                              mask_threshold=float(pp["mask_threshold"]), nms_threshold=float(pp["nms_threshold"]),
                              min_size=int(pp["min_size"]), slack=max(4, self.halo // 4))

    def detections(self, image: ImageSource | np.ndarray) -> list[tuple[Tile, dict[str, np.ndarray]]]:
        """A Mask R-CNN bundle's raw tile outputs, in the order `predict` merges them;
        `merge_detections` turns them into `predict`'s labels."""
        if self.bundle.kind != "maskrcnn":
            raise ValueError(f"detections need a Mask R-CNN bundle, this one is {self.bundle.kind!r}")
        inp = self._input(_as_source(image))
        found: list[tuple[Tile, dict[str, np.ndarray]]] = []
        self._run_detector(inp.source, *inp.tile_norm, lambda tile, out: found.append((tile, out)))
        return found

    def merge_detections(self, found: Iterable[tuple[Tile, dict[str, np.ndarray]]], shape: tuple[int, int],
                         **overrides: float) -> tuple[np.ndarray, np.ndarray]:
        """(labels over a canvas of `shape`, the model's size; scores) from `detections`, merged as
        `predict` merges them, with the bundle's post-processing or `overrides` of it (what
        `nseg-train tune` searches)."""
        merger = self.maskrcnn_merger(np.zeros(shape, np.uint32), **overrides)
        for tile, out in found:
            merger.aggregate(out, tile)
        return merger.finalize()

    def _run_detector(self, src: ImageSource, lo: float, hi: float,
                      on_tile: Callable[[Tile, dict[str, np.ndarray]], object]) -> None:
        def sink(item: tuple[list[Tile], dict[str, np.ndarray]]) -> None:
            (tile,), out = item
            on_tile(tile, out)

        bgr = self.bundle.preprocessing.channel_order == "BGR"
        self._run_model(_batches(src, self._maskrcnn_tiles(*src.shape), 1, lo, hi, bgr, "constant"), sink)

    def _predict_maskrcnn(self, src: ImageSource, lo: float, hi: float, canvas: np.ndarray) -> np.ndarray:
        merger = self.maskrcnn_merger(canvas)
        self._run_detector(src, lo, hi, lambda tile, out: merger.aggregate(out, tile))
        return merger.finalize()[1]
