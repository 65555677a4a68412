"""The whole pipeline, as functions and one `Predictor` object a test (or a folder watcher) can drive.

    read (by region) -> whole-image norm stats -> tile grid -> model (batched) -> merge -> instances -> outputs

Three stages overlap through bounded queues: a reader thread reads, normalises and batches tiles;
the calling thread runs the model (ONNX Runtime and TensorRT release the GIL); a merger thread
blends outputs and extracts instances block by block. The queues are short, so memory stays
bounded and the model is fed while the CPU stages work.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nseg_infer.backends import DEVICES, Backend, create_backend
from nseg_infer.bundle import Bundle, load_bundle
from nseg_infer.channels import ChannelChoice
from nseg_infer.imageio import REGION_THRESHOLD_PX, SUPPORTED, ArraySource, ImageSource, open_image
from nseg_infer.instances import WatershedParams
from nseg_infer.outputs import (
    DEFAULT_PRODUCTS,
    PRODUCT_SUFFIXES,
    MeasureOptions,
    ProductPaths,
    parse_products,
    write_products,
    write_summary,
)
from nseg_infer.prepare import InputOptions, segment_source
from nseg_infer.preprocess import Normalization, apply_norm, as_rgb, norm_stats
from nseg_infer.stitch import MaskRCNNMerger, UNetMerger, block_instances, paste_block
from nseg_infer.tiling import Block, Tile, TileGrid, Window, block_grid, tile_grid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """Runtime settings; None means "from the bundle's metadata"."""

    tile: int | None = None
    overlap: int | None = None      # the halo, in pixels, on each side of a tile core
    batch: int | None = None
    device: str = "auto"
    block: int = 4096               # instance extraction block for images larger than this side
    margin: int = 128               # block margin: nuclei clumps up to this size are seamless
    large_px: int = 8192 * 8192     # above: labels on disk (memmap) and a tiled BigTIFF
    region_px: int = REGION_THRESHOLD_PX  # above: TIFFs are read window by window
    overview_side: int = 4096       # overlay longest side for large images
    threads: int | None = None
    queue_depth: int = 3
    channel: int | None = None      # the nuclear channel of a multichannel image (0-based)
    channels: tuple[int, ...] | None = None  # or up to three channels onto the model's R, G, B
    pixel_size: float | None = None  # µm per pixel, overriding the file's metadata
    diameter: float | None = None   # typical nucleus diameter (px) in the input: rescale to the model's
    products: tuple[str, ...] = DEFAULT_PRODUCTS

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

    @property
    def input_options(self) -> InputOptions:
        return InputOptions(ChannelChoice.parse(self.channel, self.channels), self.pixel_size, self.diameter)


@dataclass(frozen=True)
class FileResult:
    input: Path
    outputs: tuple[Path, ...] = ()
    n_nuclei: int = 0
    seconds: float = 0.0
    error: str | None = None
    height: int = 0
    width: int = 0
    backend: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6

    def summary_row(self) -> dict:
        return {"input": str(self.input), "status": "ok" if self.ok else "error", "n_nuclei": self.n_nuclei,
                "height": self.height, "width": self.width, "megapixels": round(self.megapixels, 3),
                "seconds": round(self.seconds, 3), "backend": self.backend,
                "labels": next((str(o) for o in self.outputs if o.name.endswith(".labels.tif")), ""),
                "error": self.error or ""}


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray          # HxW uint32 (an ndarray, or a memmap for large images)
    max_label: int
    scores: np.ndarray | None   # Mask R-CNN: scores[k] is the score of label k + 1
    norm: tuple[float, float]
    cut_clumps: int = 0         # UNet clumps larger than the block margin (possibly not seamless)
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Threads


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def background(items: Iterable, depth: int) -> Iterator:
    """Iterate `items` in a thread, at most `depth` ahead; exceptions surface in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for it in items:
                while not stop.is_set():
                    try:
                        q.put(it, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as e:
            q.put(_Failure(e))

    t = threading.Thread(target=work, daemon=True, name="nseg-reader")
    t.start()
    try:
        while True:
            it = q.get()
            if it is _DONE:
                return
            if isinstance(it, _Failure):
                raise it.exc
            yield it
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        t.join(timeout=5)


class _Worker:
    """One consumer thread fed through a bounded queue; `close()` re-raises its first error."""

    def __init__(self, fn: Callable, depth: int) -> None:
        self.fn = fn
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._loop, daemon=True, name="nseg-merger")
        self.t.start()

    def _loop(self) -> None:
        while (item := self.q.get()) is not _DONE:
            if self.error is None:
                try:
                    self.fn(item)
                except BaseException as e:
                    self.error = e

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def close(self) -> None:
        self.q.put(_DONE)
        self.t.join()
        if self.error is not None:
            raise self.error


# ----------------------------------------------------------------------------------------------
# Pure helpers


def image_norm_stats(src: ImageSource, norm: Normalization, *, max_pixels: int = 4_000_000) -> tuple[float, float]:
    """`preprocess.norm_stats` over the whole image; a region reader gathers the very same regular
    subsample band by band, so a huge TIFF gets exactly the statistics of its in-memory twin."""
    if not src.is_region_reader:
        return norm_stats(as_rgb(src.read_all(), source=str(src.path)), norm, max_pixels=max_pixels)
    h, w = src.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
    rows = []
    band = max(step, (1024 // step) * step)
    for y0 in range(0, h, band):
        part = src.read(Window(y0, min(y0 + band, h), 0, w))
        rows.append(as_rgb(part[::step, ::step]))
    return norm_stats(np.concatenate(rows, axis=0), norm, max_pixels=1 << 62)


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


def _new_canvas(shape: tuple[int, int], large: bool, work_dir: Path | None) -> tuple[np.ndarray, Path | None]:
    if not large:
        return np.zeros(shape, np.uint32), None
    fd, name = tempfile.mkstemp(prefix=".nseg-canvas.", suffix=".tmp", dir=work_dir)
    os.close(fd)
    # Disk-backed: the label canvas of a 40k x 40k scan would not fit in memory.
    return np.memmap(name, dtype=np.uint32, mode="w+", shape=shape), Path(name)


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[FileResult]]:
    """Files, folders (their supported images, sorted) and glob patterns -> (files, failures for
    inputs that name nothing)."""
    files: list[Path] = []
    missing: list[FileResult] = []
    for item in inputs:
        s = str(item)
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SUPPORTED
                           and not q.name.startswith(".") and not q.name.endswith(PRODUCT_SUFFIXES))
            files.extend(found)
            if not found:
                missing.append(FileResult(p, error=f"{p}: folder has no supported images ({', '.join(SUPPORTED)})"))
        elif p.exists():
            files.append(p)
        elif glob.has_magic(s):
            found = sorted(Path(q) for q in glob.glob(s, recursive=True) if Path(q).is_file())
            files.extend(found)
            if not found:
                missing.append(FileResult(p, error=f"{s}: pattern matches no files"))
        else:
            missing.append(FileResult(p, error=f"{p}: file not found"))
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    return unique, missing


# ----------------------------------------------------------------------------------------------
# The predictor


class Predictor:
    """Made once per bundle + device; then `predict`, `process_file` and `process_many`."""

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
        self.backend_name = getattr(self.backend, "name", type(self.backend).__name__)
        self.output_name = b.outputs[0].name
        if b.kind == "unet":
            self.params = WatershedParams.from_dict(dict(b.postprocessing))
        if c.diameter is not None and b.scale.nucleus_diameter_px is None:
            raise ValueError(f"--diameter needs a model that records its training scale; {b.path / 'metadata.json'} "
                             "has no 'scale': {'nucleus_diameter_px': ...}")

    # -- prediction ------------------------------------------------------------------------------

    def predict(self, image: ImageSource | np.ndarray, *, work_dir: Path | None = None) -> Prediction:
        src = image if isinstance(image, ImageSource) else ArraySource(image)
        h, w = src.shape
        lo, hi = image_norm_stats(src, self.bundle.preprocessing.normalization)
        large = h * w > self.config.large_px
        canvas, canvas_file = _new_canvas((h, w), large, work_dir)
        try:
            if self.bundle.kind == "unet":
                n, cut = self._predict_unet(src, lo, hi, canvas)
                pred = Prediction(canvas, n, None, (lo, hi), cut)
            else:
                scores = self._predict_maskrcnn(src, lo, hi, canvas)
                pred = Prediction(canvas, len(scores), scores, (lo, hi))
        except BaseException:
            if canvas_file is not None:
                del canvas
                canvas_file.unlink(missing_ok=True)
            raise
        if canvas_file is not None:
            pred.extra["canvas_file"] = canvas_file
        return pred

    def probabilities(self, image: ImageSource | np.ndarray) -> np.ndarray:
        """A UNet bundle's blended [2, H, W] field (foreground, distance) before the instance step,
        exactly as `predict` computes it for an image of one block; `nseg-train tune` searches the
        instance parameters on it. Holds the whole field in memory."""
        if self.bundle.kind != "unet":
            raise ValueError(f"probabilities need a UNet bundle, this one is {self.bundle.kind!r}")
        src = image if isinstance(image, ImageSource) else ArraySource(image)
        h, w = src.shape
        lo, hi = image_norm_stats(src, self.bundle.preprocessing.normalization)
        grid = self._grid(h, w)
        merger = UNetMerger(grid, Window(0, h, 0, w))

        def sink(item: tuple[list[Tile], dict[str, np.ndarray]]) -> None:
            tiles, out = item
            for t, p in zip(tiles, out[self.output_name], strict=True):  # index order, as in predict
                merger.aggregate(np.asarray(p[:2], np.float32)[None], [t])

        bgr = self.bundle.preprocessing.channel_order == "BGR"
        self._run_model(_batches(src, grid.tiles, self.batch, lo, hi, bgr, "reflect"), sink)
        return merger.finalize()

    def _grid(self, h: int, w: int) -> TileGrid:
        return tile_grid(h, w, self.tile, self.halo, self.bundle.preprocessing.size_divisor)

    def _run_model(self, batches: Iterable[tuple[list[Tile], np.ndarray]], sink: Callable) -> None:
        worker = _Worker(sink, self.config.queue_depth)
        try:
            for tiles, x in background(batches, self.config.queue_depth):
                out = self.backend.run(x)
                worker.put((tiles, out))
        finally:
            worker.close()

    def _predict_unet(self, src: ImageSource, lo: float, hi: float, canvas: np.ndarray) -> tuple[int, int]:
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
                merger = UNetMerger(grid, b.outer)
                for i in need[b.index]:  # index order: bitwise-identical sums whatever the blocks
                    merger.aggregate(cache[i][None], [grid.tiles[i]])
                field_ = merger.finalize()
                lab, cut = block_instances(field_[0], field_[1], self.params, b, (h, w))
                paste_block(canvas, lab, b.outer, state["count"])
                state["count"] += int(lab.max())
                state["cut"] += cut
                for i in need[b.index]:
                    if last[i] == b.index:
                        del cache[i]
                state["next"] += 1

        def sink(item: tuple[list[Tile], dict[str, np.ndarray]]) -> None:
            tiles, out = item
            probs = out[self.output_name]
            for t, p in zip(tiles, probs, strict=True):
                cache[t.index] = np.asarray(p[:2], np.float32)
            finish_ready_blocks()

        bgr = self.bundle.preprocessing.channel_order == "BGR"
        self._run_model(_batches(src, order, self.batch, lo, hi, bgr, "reflect"), sink)
        if state["next"] != len(blocks):
            raise RuntimeError("internal error: not every block was finished")
        if state["cut"]:
            log.warning("%s: %d foreground clumps exceed the block margin (%d px); they may differ from a "
                        "one-pass result", src.path, state["cut"], c.margin)
        return state["count"], state["cut"]

    def _maskrcnn_tiles(self, h: int, w: int) -> list[Tile]:
        # The detector graph takes one fixed-size tile, so small images are padded to a full tile.
        grid = tile_grid(max(h, self.tile - 2 * self.halo), max(w, self.tile - 2 * self.halo), self.tile,
                         self.halo, self.bundle.preprocessing.size_divisor)
        return [Tile(t.index, t.read, t.core.clip(h, w)) for t in grid.tiles if t.core.y0 < h and t.core.x0 < w]

    def maskrcnn_merger(self, canvas: np.ndarray, **overrides: float) -> MaskRCNNMerger:
        """The merger `predict` uses, with the bundle's post-processing (or `overrides` of
        score_threshold, mask_threshold, nms_threshold, min_size: what `nseg-train tune` searches)."""
        pp = {"score_threshold": 0.5, "mask_threshold": 0.5, "nms_threshold": 0.5, "min_size": 0,
              **{k: v for k, v in self.bundle.postprocessing.items() if k != "kind"}, **overrides}
        return MaskRCNNMerger(canvas, score_threshold=float(pp["score_threshold"]),
                              mask_threshold=float(pp["mask_threshold"]), nms_threshold=float(pp["nms_threshold"]),
                              min_size=int(pp["min_size"]), slack=max(4, self.halo // 4))

    def detections(self, image: ImageSource | np.ndarray) -> list[tuple[Tile, dict[str, np.ndarray]]]:
        """A Mask R-CNN bundle's raw tile outputs, in the order `predict` merges them; aggregating
        them into `maskrcnn_merger` reproduces `predict`'s labels."""
        if self.bundle.kind != "maskrcnn":
            raise ValueError(f"detections need a Mask R-CNN bundle, this one is {self.bundle.kind!r}")
        src = image if isinstance(image, ImageSource) else ArraySource(image)
        lo, hi = image_norm_stats(src, self.bundle.preprocessing.normalization)
        found: list[tuple[Tile, dict[str, np.ndarray]]] = []

        def sink(item: tuple[list[Tile], dict[str, np.ndarray]]) -> None:
            (tile,), out = item
            found.append((tile, out))

        bgr = self.bundle.preprocessing.channel_order == "BGR"
        self._run_model(_batches(src, self._maskrcnn_tiles(*src.shape), 1, lo, hi, bgr, "constant"), sink)
        return found

    def _predict_maskrcnn(self, src: ImageSource, lo: float, hi: float, canvas: np.ndarray) -> np.ndarray:
        merger = self.maskrcnn_merger(canvas)

        def sink(item: tuple[list[Tile], dict[str, np.ndarray]]) -> None:
            (tile,), out = item
            merger.aggregate(out, tile)

        bgr = self.bundle.preprocessing.channel_order == "BGR"
        self._run_model(_batches(src, self._maskrcnn_tiles(*src.shape), 1, lo, hi, bgr, "constant"), sink)
        return merger.finalize()[1]

    # -- files -----------------------------------------------------------------------------------

    def process_file(self, path: str | os.PathLike, out_dir: str | os.PathLike) -> FileResult:
        """Segment one file and write its products. Never raises for a bad input: the error is in
        the result, naming the file."""
        p, out = Path(path), Path(out_dir)
        t0 = time.perf_counter()
        h = w = 0
        try:
            out.mkdir(parents=True, exist_ok=True)
            with open_image(p, region_threshold_px=self.config.region_px) as raw:
                h, w = raw.shape
                with segment_source(self, raw, self.config.input_options, work_dir=out) as seg:
                    paths = ProductPaths.for_input(_stem(p), out, self.config.products)
                    opts = MeasureOptions(_stem(p), seg.pixel_size_um, seg.channels)
                    n = write_products(paths, seg.labels, seg.max_label, seg.view, seg.norm, scores=seg.scores,
                                       tiled=h * w > self.config.large_px, block=self.config.block,
                                       margin=self.config.margin, overview_side=self.config.overview_side,
                                       opts=opts)
            return FileResult(p, paths.all(), n, time.perf_counter() - t0, None, h, w, self.backend_name)
        except Exception as e:
            # Deliberately broad: decoders and runtimes raise their own types for corrupt input,
            # and one bad file must never stop a batch. The traceback stays in the debug log.
            msg = str(e) if str(p) in str(e) else f"{p}: {type(e).__name__}: {e}"
            log.error("%s", msg)
            log.debug("traceback for %s", p, exc_info=True)
            return FileResult(p, (), 0, time.perf_counter() - t0, msg, h, w, self.backend_name)

    def process_many(self, paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                     progress: Callable[[FileResult], None] | None = None,
                     summary: bool = True) -> list[FileResult]:
        """Every file, in order; one bad file never stops the batch. Writes OUT/summary.csv."""
        results = []
        for p in paths:
            r = self.process_file(p, out_dir)
            results.append(r)
            if progress is not None:
                progress(r)
        if summary:
            write_summary(Path(out_dir) / "summary.csv", [r.summary_row() for r in results])
        return results



def _stem(path: Path) -> str:
    name = path.name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def run(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, predictor: Predictor | None = None,
        progress: Callable[[FileResult], None] | None = None,
        on_start: Callable[[int], None] | None = None) -> list[FileResult]:
    """`nseg-infer run`: expand inputs (files, folders, glob patterns), segment them all with
    `predictor` (default: the default model), write summary.csv. Failures, including inputs that
    name nothing, are in the returned list with their error. `on_start` is told how many files
    were found before the first one is segmented."""
    files, missing = expand_inputs(inputs)
    predictor = predictor or Predictor()
    if on_start is not None:
        on_start(len(files))
    results = missing + predictor.process_many(files, out_dir, progress=progress, summary=False)
    write_summary(Path(out_dir) / "summary.csv", [r.summary_row() for r in results])
    return results
