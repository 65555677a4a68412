"""What runs on the workers of a cluster run, and the plan of one large image split into blocks.

Files: `file_task` is `FileRunner.process_file`, so a file's products are byte for byte those of
`nseg-infer run`. Each worker makes its `Predictor` once (`worker_predictor`) and keeps it.

A large image (UNet bundle, no whole-image `resize`, no rescaling) is split into the runtime's own
instance blocks (`tiling.block_grid` with `RunConfig.block` and `margin`), one task each:

    client: the image's plan once (`Planner.plan`: blocks, whole-image normalisation, modality;
        no model on the client) -> LargeImage
    block_task (one per block): the block's region read by the worker -> `Predictor.run_block`
        -> the nuclei it owns, numbered 1..n, saved beside the output (`block-NNNNNN.npz`)
    client: global ids = prefix sum of n in block order (so completion order never matters)
    assemble_task (one per block core = one zarr chunk): the owned labels of the blocks whose
        outer window meets the chunk, pasted in block order with `blocks.paste_owned`, exactly as
        `predict` pastes them -> the chunk of the OME-Zarr label image (`omezarr`)
    measure_task (one per product block: `outputs.product_blocks`, the instance blocks unless the
        overlay's downsampling trims them): the nuclei it owns measured from the zarr labels and
        the image's region, rendered into its parts of the CSV, GeoJSON and ROIs (`part-NNNNNN.*`)
    products_task: the image's sinks, as `nseg-infer run` writes them: the labels TIFF and the
        overlay (and `NAME.ome.zarr`, where chosen) from the zarr labels, the parts concatenated
        in block order: the same files, byte for byte.

So the label image equals `Predictor.predict`'s pixel for pixel and no worker holds the whole
image. Measuring, the bulk of the products' work, runs one task per block in parallel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nseg_data.atomic import atomic_path

from nseg_infer.engine.blocks import paste_owned
from nseg_infer.engine.bundle import Bundle
from nseg_infer.engine.config import RunConfig
from nseg_infer.engine.plan import Plan, Planner
from nseg_infer.engine.predictor import Predictor
from nseg_infer.engine.tiling import Block
from nseg_infer.regions import ImageSource
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import FileRunner, failed, sink_options
from nseg_infer.runners.inputs import FileResult
from nseg_infer.runners.prepare import ModelInput, measured_input, model_input
from nseg_infer.runners.size import SizeEstimate, estimate_diameter, needs_estimate
from nseg_infer.sinks.base import LabelledImage
from nseg_infer.sinks.names import stem
from nseg_infer.sinks.omezarr import open_labels
from nseg_infer.sinks.outputs import (
    Parts,
    ProductPaths,
    block_data,
    block_parts,
    part_sinks,
    product_blocks,
    write_products,
)
from nseg_infer.sources.channels import model_view

log = logging.getLogger(__name__)

WORK_DIR = ".nseg-cluster"  # in OUT: block results and the label zarr being assembled

# ----------------------------------------------------------------------------------------------
# One Predictor per worker


_lock = threading.Lock()


class _Local:
    """Holds the cache when a task runs outside a worker (e.g. called directly)."""


_LOCAL = _Local()


def _holder() -> object:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return _LOCAL


def worker_predictor(bundle: str, config: RunConfig) -> Predictor:
    """The worker's Predictor for (bundle folder, settings), made by its first task and kept on the
    worker object: loading the model per task would cost more than many small tasks."""
    holder = _holder()
    with _lock:  # a worker with several threads makes it once too
        cache: dict = holder.__dict__.setdefault("_nseg_predictors", {})
        key = (bundle, config)
        if key not in cache:
            cache[key] = Predictor(bundle, config)
            holder.__dict__["_nseg_predictor_loads"] = holder.__dict__.get("_nseg_predictor_loads", 0) + 1
        return cache[key]


def predictor_loads(dask_worker: object | None = None) -> int:
    """How many Predictors this worker has made (`client.run(predictor_loads)`: one per setting)."""
    holder = dask_worker if dask_worker is not None else _holder()
    return int(holder.__dict__.get("_nseg_predictor_loads", 0))


def file_task(bundle: str, config: RunConfig, file_config: FileConfig, path: str, out_dir: str) -> FileResult:
    return FileRunner(worker_predictor(bundle, config), file_config).process_file(path, out_dir)


# ----------------------------------------------------------------------------------------------
# Large images


@dataclass(frozen=True)
class LargeImage:
    """A large image's block plan, made once on the client and sent with each of its tasks."""

    path: Path
    layout: Plan                     # `Planner.plan` of the image: blocks, normalisation, modality
    pixel_size_um: tuple[float, float] | None
    work: Path                       # its folder under OUT/.nseg-cluster

    @property
    def shape(self) -> tuple[int, int]:
        return self.layout.shape

    @property
    def blocks(self) -> tuple[Block, ...]:
        return self.layout.blocks

    @property
    def plan(self) -> str:
        """What the manifest's block records are valid for."""
        h, w = self.shape
        b, lay = self.blocks[0], self.layout
        return (f"{h}x{w}/block {b.core.shape}/outer {b.outer.shape}/tile {lay.tile} halo {lay.halo}"
                f"/norm {lay.tile_norm} modality {lay.modality}")

    def block_file(self, index: int) -> Path:
        return self.work / f"block-{index:06d}.npz"

    @property
    def labels_work(self) -> Path:
        """The label image the chunk tasks assemble (OME-Zarr): the canvas the products are
        written from, a product itself only through the `zarr` sink."""
        return self.work / "labels.ome.zarr"


def nuclei_size_task(bundle: str, config: RunConfig, file_config: FileConfig, path: str) -> SizeEstimate:
    """The nucleus size of a large image for a model that measures it (`runners.size`), on a
    worker, before the client plans its blocks; without the first pass's labels."""
    predictor = worker_predictor(bundle, config)
    with file_config.open(Path(path)) as raw:
        est = estimate_diameter(predictor, model_view(raw, file_config.inputs.choice))
    return dataclasses.replace(est, whole=None)


def plan_large_image(planner: Planner, file_config: FileConfig, path: Path, out_dir: Path,
                     measure: Callable[[Path], SizeEstimate] | None = None) -> LargeImage | str:
    """The block plan of `path` (read as `file_config` says), or why it runs as one file task
    instead. Reads the whole image once (the normalisation statistics `predict` computes over it).
    For a model that measures each image's nuclei, `measure` (`nuclei_size_task` on a worker)
    measures them first: an image that is then not enlarged is planned in blocks as usual (its
    block tasks see it as it is), an enlarged one runs as one file task."""
    if planner.bundle.kind != "unet":
        return f"a {planner.bundle.kind} bundle segments a large image as one task"
    if planner.bundle.preprocessing.resize is not None:
        return "the bundle resizes whole images"
    with _model_source(planner.bundle, file_config, path) as (raw, inp):
        if needs_estimate(planner.bundle, file_config.inputs, inp.pixel_size_um):
            if measure is None:
                return "the image's nucleus size is measured first (the bundle's scale.min_nucleus_diameter_px)"
            inp = measured_input(planner.bundle, raw, file_config.inputs, measure(path))
        if not inp.rescale.identity:
            return f"the image is rescaled for the model ({inp.rescale.reason})"
        if max(inp.source.shape) <= planner.config.block:
            return "the image is one instance block"
        layout = planner.plan(inp.source)
        px = inp.pixel_size_um
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return LargeImage(path, layout, px, out_dir / WORK_DIR / f"{stem(path)}-{key}")


@contextlib.contextmanager
def _model_source(bundle: Bundle, file_config: FileConfig, path: Path) -> Iterator[tuple[ImageSource, ModelInput]]:
    """The file opened as `file_config` says, and what the model is given of it."""
    with file_config.open(path) as raw:
        yield raw, model_input(bundle, raw, file_config.inputs)


@dataclass(frozen=True)
class BlockDone:
    index: int
    n: int          # nuclei owned, labelled 1..n in the block file
    cut: int        # owned clumps touching the margin (larger than it: possibly not seamless)
    seconds: float
    backend: str


def block_task(bundle: str, config: RunConfig, file_config: FileConfig, image: LargeImage, index: int) -> BlockDone:
    """One block: the worker reads the regions it needs, labels the nuclei it owns and saves them
    (atomically: a retried or repeated task rewrites the same file)."""
    t0 = time.perf_counter()
    predictor = worker_predictor(bundle, config)
    with _model_source(predictor.bundle, file_config, image.path) as (_, inp):
        result = predictor.run_block(inp.source, image.blocks[index], image.layout)
    image.work.mkdir(parents=True, exist_ok=True)
    with atomic_path(image.block_file(index)) as tmp:
        np.savez_compressed(tmp, labels=result.labels)
    return BlockDone(index, result.n, result.cut, time.perf_counter() - t0, predictor.backend_name)


def assemble_chunk(image: LargeImage, index: int, offsets: Sequence[int]) -> np.ndarray:
    """Block `index`'s core of the image's label image (uint32), from the saved blocks."""
    core = image.blocks[index].core
    out = np.zeros(core.shape, np.uint32)
    for b in image.blocks:  # block order: a pixel two blocks claim goes to the first, as in predict
        o = b.outer
        if not o.intersects(core):
            continue
        with np.load(image.block_file(b.index)) as f:
            paste_owned(out, core, f["labels"], o, offsets[b.index])
    return out


def assemble_task(image: LargeImage, index: int, offsets: Sequence[int], array: str) -> int:
    """Write one chunk of the zarr label image (chunks are block cores: one writer per chunk)."""
    chunk = assemble_chunk(image, index, offsets)
    z = open_labels(Path(array), mode="r+")
    z[image.blocks[index].core.slices] = chunk.astype(z.dtype, copy=False)
    return index


@dataclass(frozen=True)
class PartsDone:
    index: int      # product block (`outputs.product_blocks`)
    nuclei: int     # nuclei it owns
    cut: int        # of which possibly cut by its margin
    seconds: float


def parts_stem(image: LargeImage, index: int) -> Path:
    """Product block `index`'s parts: `part-NNNNNN.PART_NAME` in the image's work folder."""
    return image.work / f"part-{index:06d}"


def _labelled(image: LargeImage, inp: ModelInput, array: str, total: int) -> LabelledImage:
    """The image as the sinks see it: the assembled zarr labels over the channels the model saw."""
    return LabelledImage(stem(image.path), open_labels(Path(array)), total, inp.view, image.layout.norm, inp.channels,
                         None, inp.pixel_size_um)


def measure_task(bundle: str, config: RunConfig, file_config: FileConfig, image: LargeImage, index: int, array: str,
                 total: int) -> PartsDone:
    """One product block: the nuclei it owns measured from the zarr labels and the image's region,
    rendered into the parts of the chosen products (CSV rows, GeoJSON features, ROIs) and saved
    atomically in the work folder (a retried task rewrites the same files)."""
    t0 = time.perf_counter()
    predictor = worker_predictor(bundle, config)
    with _model_source(predictor.bundle, file_config, image.path) as (_, inp):
        labelled = _labelled(image, inp, array, total)
        block = product_blocks(image.shape, sink_options(config, file_config, image.shape))[index]
        products = file_config.products
        parts = block_parts(products, block_data(labelled, block, products))
    parts.save(parts_stem(image, index))
    return PartsDone(index, parts.nuclei, parts.cut, time.perf_counter() - t0)


def products_task(bundle: str, config: RunConfig, file_config: FileConfig, image: LargeImage, out_dir: str,
                  array: str, total: int, parts: Sequence[PartsDone], seconds: float) -> FileResult:
    """`nseg-infer run`'s products of the image through its sinks: the labels TIFF and overlay from
    the zarr labels, the CSV, GeoJSON and ROIs from the block tasks' parts, concatenated in block
    order; `NAME.ome.zarr` where `zarr` is among the products, through its sink as in a plain run.
    `seconds` is the worker time of its tasks; a failure is in the result."""
    predictor = worker_predictor(bundle, config)
    p, out = image.path, Path(out_dir)
    t0 = time.perf_counter()
    h = w = 0
    done = {d.index: d for d in parts}
    try:
        with _model_source(predictor.bundle, file_config, p) as (raw, inp):
            h, w = raw.shape
            labelled = _labelled(image, inp, array, total)
            products = file_config.products
            paths = ProductPaths.for_input(stem(p), out, products)
            names = [k.part_name for k in part_sinks(products)]

            def load(block: Block) -> Parts:
                d = done[block.index]
                return Parts.load(parts_stem(image, block.index), names, d.nuclei, d.cut)

            n = write_products(paths, labelled, sink_options(config, file_config, (h, w)), parts=load if names else None)
        return FileResult(p, paths.all(), n, seconds + time.perf_counter() - t0, None, h, w, predictor.backend_name)
    except Exception as e:  # as process_file: reported in the result, naming the file
        return failed(p, e, seconds + time.perf_counter() - t0, h, w, predictor.backend_name)
