"""The Predictor: one image source in, labels out, through one block pipeline.

    plan(source)                  tile grid, instance blocks, whole-image normalisation, modality
    tile_outputs(tile reads)      reader thread: read + normalise + batch -> backend -> per-tile outputs
    block step                    a block's tile outputs blended, instance step, the nuclei it owns
    paste                         blocks in order, ids offset by the prefix sum of their counts

`predict(image)` streams blocks as their tiles complete (a tile's output is dropped after its last
block); `run_block(source, block, plan)` is one block on its own (the cluster's block task);
`predict_many(images)` packs the tiles of many one-block images into shared model calls (the file
runner's windows of small files, the folder watch's groups);
`probabilities` + `instances` are the same blocks' fields and instance step, for tuning and parity.
Three stages overlap through bounded queues (`engine.stages`): the reader thread, the model (on
the calling thread, or on the backend's `lanes` threads, each call a share of the batch: the
backends release the GIL) and a merger thread for the block step.

The Predictor sees the pixels the model is given: channel choice, rescaling (`--diameter`) and a
bundle's whole-image `resize` are Source decorators (`nseg_infer.sources`), and labels go back to
the input's size there. Files and products are the file runner's (`nseg_infer.runners.files`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from nseg_infer.engine.backends import Backend, FlipAverage, create_backend
from nseg_infer.engine.blocks import (
    BlockResult,
    BlockStream,
    Paster,
    block_field,
    block_tiles,
    field_instances,
)
from nseg_infer.engine.bundle import Bundle, load_bundle
from nseg_infer.engine.config import RunConfig
from nseg_infer.engine.detections import MaskRCNNMerger
from nseg_infer.engine.fields import Fields, instance_labels
from nseg_infer.engine.instances import instance_params
from nseg_infer.engine.plan import Plan, Planner, as_source
from nseg_infer.engine.stages import Worker, background, in_flight
from nseg_infer.engine.tiles import TileRead, tile_batches
from nseg_infer.engine.tiling import Block, Tile
from nseg_infer.regions import ImageSource

__all__ = ["Prediction", "Predictor", "RunConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray          # HxW uint32 at the source's size (in memory, or the caller's canvas)
    max_label: int
    scores: np.ndarray | None   # Mask R-CNN: scores[k] is the score of label k + 1
    norm: tuple[float, float]   # the image's (low, high) normalisation
    cut_clumps: int = 0         # UNet clumps larger than the block margin (possibly not seamless)


class Predictor(Planner):
    """A `Planner` with a model: made once per bundle + device; then `predict`, `predict_many`,
    `run_block` and the field and detection methods (see the module docstring)."""

    def __init__(self, bundle: Bundle | str | os.PathLike | None = None, config: RunConfig | None = None, *,
                 backend: Backend | None = None) -> None:
        super().__init__(bundle if isinstance(bundle, Bundle) else load_bundle(bundle), config or RunConfig())
        self.backend = backend or create_backend(self.bundle, self.config.device, threads=self.config.threads)
        if self.config.flips:
            self.backend = FlipAverage(self.backend)
        self.backend_name = getattr(self.backend, "name", type(self.backend).__name__)
        self.output_name = self.bundle.outputs[0].name

    # -- the one road to the model ----------------------------------------------------------------

    def tile_outputs(self, reads: Iterable[TileRead]) -> Generator[tuple[TileRead, np.ndarray | dict[str, np.ndarray]], None, None]:
        """Each read with its output, in order: tiles are read, normalised and batched (consecutive
        tiles of one shape share a batch of up to `batch`, split between the backend's lanes) in a
        reader thread, the model runs on this thread or on the lanes' threads. A UNet tile's output
        is its [C, h, w] float32 field (the channels the instance step uses); a detector's is its
        dict of boxes, scores and masks."""
        unet = self.bundle.kind == "unet"
        # A backend with several lanes takes the batch split between them: as many tiles in
        # flight, and about as much memory, as one call of `batch`.
        lanes = getattr(self.backend, "lanes", 1)
        batches = tile_batches(reads, max(1, self.batch // lanes), bgr=self.bundle.preprocessing.channel_order == "BGR",
                               pad_mode="reflect" if unet else "constant")
        with contextlib.closing(background(batches, self.config.queue_depth)) as queue:
            for chunk, out in in_flight(self.backend.run, queue, lanes):
                if unet:
                    for r, p in zip(chunk, out[self.output_name], strict=True):
                        yield r, np.asarray(p[:self.field_channels], np.float32)
                else:
                    (r,) = chunk
                    yield r, out

    def _drain(self, outputs: Generator, consume: Callable[[tuple], None]) -> None:
        """`consume` each tile output on a merger thread while the model runs on this one. On an
        error the outputs are closed at once, which stops their reader thread."""
        worker = Worker(consume, self.config.queue_depth * self.batch)
        try:
            with contextlib.closing(outputs):
                for item in outputs:
                    worker.put(item)
        finally:
            worker.close()

    def _stream_blocks(self, src: ImageSource, plan: Plan, on_block: Callable[[Block, np.ndarray], None]) -> None:
        """`on_block(block, field)` for each block of `plan`, in order, as its tiles complete."""
        stream = BlockStream(plan.grid, plan.blocks, self.field_channels, on_block)
        reads = (TileRead(None, src, t, plan.tile_norm) for t in stream.order)
        self._drain(self.tile_outputs(reads), lambda item: stream.add([(item[0].tile, item[1])]))
        stream.check_done()

    # -- prediction ------------------------------------------------------------------------------

    def predict(self, image: ImageSource | np.ndarray, *, labels: np.ndarray | None = None,
                plan: Plan | None = None) -> Prediction:
        """Labels of one image, written into `labels` (a zeroed HxW uint32 array, e.g. a `canvas`)
        or into a new in-memory array; `plan`: the image's, when the caller has made it."""
        src = as_source(image)
        plan = plan or self.plan(src)
        canvas = np.zeros(src.shape, np.uint32) if labels is None else labels
        if canvas.shape != src.shape:
            raise ValueError(f"{src.path}: labels canvas {canvas.shape} is not the image's shape {src.shape}")
        if self.bundle.kind != "unet":
            merger = self.maskrcnn_merger(canvas)
            self._run_detector(src, plan, lambda tile, out: merger.aggregate(out, tile))
            scores = merger.finalize()[1]
            return Prediction(canvas, len(scores), scores, plan.norm)
        paster = Paster(canvas)
        params = self.params_for(plan.modality)
        self._stream_blocks(src, plan, lambda b, f: paster.paste(b, field_instances(f, b, plan.shape, params)))
        if paster.cut:
            log.warning("%s: %d foreground clumps exceed the block margin (%d px); they may differ from a "
                        "one-pass result", src.path, paster.cut, self.config.margin)
        return Prediction(canvas, paster.count, None, plan.norm, paster.cut)

    def run_block(self, source: ImageSource | np.ndarray, block: Block, plan: Plan) -> BlockResult:
        """One instance block of `source` on its own, exactly as `predict` labels it: the model on
        the tiles whose read windows meet `block.outer`, blended in index order, then the instance
        step with the margin ownership rule. `predict`'s labels are these pasted in block order
        (`blocks.paste_owned`), each offset by the nuclei of the blocks before it."""
        if self.bundle.kind != "unet":
            raise ValueError(f"block-wise prediction needs a UNet bundle, this one is {self.bundle.kind!r}")
        src = as_source(source)
        if src.shape != plan.shape:
            raise ValueError(f"{src.path}: image is {src.shape}, planned as {plan.shape}; was it replaced?")
        grid = plan.grid
        ids = block_tiles(grid, block)
        reads = (TileRead(None, src, grid.tiles[i], plan.tile_norm) for i in ids)
        with contextlib.closing(self.tile_outputs(reads)) as tiles:  # closed, its reader stopped, on error too
            outputs = {r.tile.index: out for r, out in tiles}
        field = block_field(grid, block, outputs, self.field_channels, ids)
        return field_instances(field, block, plan.shape, self.params_for(plan.modality))

    def predict_many(self, images: Sequence[ImageSource | np.ndarray], *,
                     on_ready: Callable[[int, Prediction], None] | None = None) -> list[Prediction]:
        """`predict` of each image, labels in memory, in order. A UNet's tiles of every image that
        is one instance block (side <= `RunConfig.block`) are packed into shared model calls of up
        to `batch` tiles, so many small images cost a few batched calls; each image still gets
        exactly `predict`'s labels. Only tiles of one shape can share a call (a tile grown to
        another's shape sees more around it, which changes its output), so the tiles are grouped
        by shape across all the images: images whose tiles have one shape share calls wherever
        they are in `images`. The detector graph takes one tile per call: a plain loop.

        `on_ready(k, prediction)` is called as each image's labels are made (in the order they
        are made, which the grouping by shape may make another than `images`'), from the merger
        thread while the model runs on later images' tiles: a caller starts on an image's
        products without waiting for the rest."""
        srcs = [as_source(i) for i in images]
        ready = on_ready or (lambda k, pred: None)
        if self.bundle.kind != "unet":
            return [self._ready(ready, k, self.predict(s)) for k, s in enumerate(srcs)]
        plans = [self.plan(s) for s in srcs]
        grids = {k: p.grid for k, p in enumerate(plans) if len(p.blocks) == 1}
        # Within a shape, images and tiles keep their order.
        by_shape: dict[tuple[int, int], list[TileRead]] = {}
        for k, grid in grids.items():
            by_shape.setdefault(grid.tile_shape, []).extend(TileRead(k, srcs[k], t, plans[k].tile_norm) for t in grid.tiles)
        outputs: dict[int, dict[int, np.ndarray]] = {k: {} for k in grids}
        preds: dict[int, Prediction] = {}

        def take(item: tuple[TileRead, np.ndarray]) -> None:
            r, out = item
            k = r.key
            outputs[k][r.tile.index] = out
            if len(outputs[k]) == len(grids[k]):  # the image's last tile: its one block
                plan, block = plans[k], plans[k].blocks[0]
                field = block_field(grids[k], block, outputs.pop(k), self.field_channels)
                paster = Paster(np.zeros(plan.shape, np.uint32))
                paster.paste(block, field_instances(field, block, plan.shape, self.params_for(plan.modality)))
                preds[k] = self._ready(ready, k, Prediction(paster.canvas, paster.count, None, plan.norm, paster.cut))

        self._drain(self.tile_outputs(r for reads in by_shape.values() for r in reads), take)
        return [preds[k] if k in grids else self._ready(ready, k, self.predict(s, plan=plans[k]))
                for k, s in enumerate(srcs)]

    @staticmethod
    def _ready(on_ready: Callable[[int, Prediction], None], k: int, pred: Prediction) -> Prediction:
        on_ready(k, pred)
        return pred

    # -- the field and the instance step apart (tuning, parity) -----------------------------------

    def probabilities(self, image: ImageSource | np.ndarray) -> Fields:
        """A UNet bundle's blended field per instance block of the image's plan, before the
        instance step, each computed exactly as `predict` computes it; `instances` turns them into
        `predict`'s labels and `nseg-train tune` searches the instance parameters on them."""
        if self.bundle.kind != "unet":
            raise ValueError(f"probabilities need a UNet bundle, this one is {self.bundle.kind!r}")
        src = as_source(image)
        plan = self.plan(src)
        found: list[np.ndarray] = []
        self._stream_blocks(src, plan, lambda b, f: found.append(f))
        return Fields(plan, tuple(found))

    def instances(self, fields: Fields, *, modality: str | None = None, **overrides: float) -> np.ndarray:
        """The instance step on `probabilities`' fields, block by block as `predict` runs it, with
        the bundle's post-processing for `modality` (None: its base parameters; `fields.plan.modality`
        for what `predict` picks) or `overrides` of it (what `nseg-train tune` searches); labels at
        the plan's shape."""
        return instance_labels(fields, instance_params({**self.bundle.postprocessing, **overrides}, modality))

    # -- Mask R-CNN --------------------------------------------------------------------------------

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
        src = as_source(image)
        found: list[tuple[Tile, dict[str, np.ndarray]]] = []
        self._run_detector(src, self.plan(src), lambda tile, out: found.append((tile, out)))
        return found

    def merge_detections(self, found: Iterable[tuple[Tile, dict[str, np.ndarray]]], shape: tuple[int, int],
                         **overrides: float) -> tuple[np.ndarray, np.ndarray]:
        """(labels over a canvas of `shape`, the source's size; scores) from `detections`, merged
        as `predict` merges them, with the bundle's post-processing or `overrides` of it (what
        `nseg-train tune` searches)."""
        merger = self.maskrcnn_merger(np.zeros(shape, np.uint32), **overrides)
        for tile, out in found:
            merger.aggregate(out, tile)
        return merger.finalize()

    def _run_detector(self, src: ImageSource, plan: Plan,
                      on_tile: Callable[[Tile, dict[str, np.ndarray]], object]) -> None:
        reads = (TileRead(None, src, t, plan.tile_norm) for t in self.maskrcnn_tiles(*src.shape))
        self._drain(self.tile_outputs(reads), lambda item: on_tile(item[0].tile, item[1]))
