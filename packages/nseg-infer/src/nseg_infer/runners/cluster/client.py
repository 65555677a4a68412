"""`nseg-infer run --cluster`: the runtime on a dask.distributed cluster (the `dask` extra).

    client: expand inputs -> skip files the run manifest records as finished -> submit
        one task per file (`blocks_dask.file_task`: `FileRunner.process_file`), and for a large
        image one task per instance block, then its zarr chunks, then one per product block
        (measuring its nuclei), then one that writes its products
    workers: one Predictor each, made by its first task; every task writes through
        `nseg_data.atomic`, so a retried or repeated task leaves the same files
    client: as tasks finish, record them in OUT/nseg-cluster.json; summary.csv in input order

Faults: a task whose worker dies is run again elsewhere by the scheduler (up to its
`allowed-failures`); one that raises is retried `ClusterOptions.retries` times. A file that still
fails is reported in its summary row, as `nseg-infer run` reports a bad file. A run killed
outright and started again with the same inputs, model and settings redoes only what the
manifest does not record as finished (files, and the blocks of a large image).

Inputs, bundle and OUT must be on a filesystem the client and every worker see at the same paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nseg_data.atomic import clean_temp_files, exclusive_lock

from nseg_infer.engine.blocks import label_offsets
from nseg_infer.engine.bundle import load_bundle
from nseg_infer.engine.config import RunConfig
from nseg_infer.engine.plan import Planner
from nseg_infer.runners.cluster.manifest import MANIFEST_NAME, Manifest, fingerprint
from nseg_infer.runners.cluster.tasks import (
    WORK_DIR,
    BlockDone,
    LargeImage,
    PartsDone,
    assemble_task,
    block_task,
    file_task,
    measure_task,
    nuclei_size_task,
    plan_large_image,
    products_task,
)
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import sink_options
from nseg_infer.runners.inputs import FileResult, expand_inputs, failed
from nseg_infer.runners.prepare import check_options
from nseg_infer.runners.size import SizeEstimate
from nseg_infer.runners.summary import write_summary
from nseg_infer.sinks.labels import label_dtype
from nseg_infer.sinks.omezarr import create_labels
from nseg_infer.sinks.outputs import part_sinks, product_blocks
from nseg_infer.sources.formats import LARGE_IMAGE_PX
from nseg_infer.sources.imageio import header_shape

if TYPE_CHECKING:
    from distributed import Client, Future

log = logging.getLogger(__name__)

LOCK_NAME = ".nseg-cluster.lock"
SAVE_INTERVAL_S = 1.0


class ClusterError(RuntimeError):
    """A cluster run that cannot start: no dask extra, or another run writing to the same OUT."""


@dataclass(frozen=True)
class ClusterOptions:
    """How a run is cut into tasks and how hard failures are retried."""

    split_px: int = LARGE_IMAGE_PX    # images above this many pixels: one task per instance block
    retries: int = 2                  # extra attempts of a task that raised
    shuffle_seed: int | None = None   # submit tasks in a seeded random order (results never depend on it)

    def __post_init__(self) -> None:
        if self.split_px < 1 or self.retries < 0:
            raise ValueError(f"split_px must be >= 1 and retries >= 0, got {self.split_px}, {self.retries}")


@dataclass(frozen=True)
class ClusterReport:
    results: tuple[FileResult, ...]            # summary.csv's rows, in input order
    reused: tuple[Path, ...] = ()              # files an earlier run had finished: not recomputed
    blocks_computed: int = 0
    blocks_reused: int = 0
    cut_clumps: tuple[tuple[Path, int], ...] = ()  # large images with clumps larger than the block margin
    warnings: tuple[str, ...] = ()

    @property
    def failed(self) -> tuple[FileResult, ...]:
        return tuple(r for r in self.results if not r.ok)


@dataclass
class _Large:
    """Client-side state of one large image (mutable bookkeeping of the run loop)."""

    order: int
    image: LargeImage
    done: dict[int, BlockDone | tuple[int, int]] = field(default_factory=dict)
    parts: dict[int, PartsDone] = field(default_factory=dict)  # by product block
    pending: int = 0
    seconds: float = 0.0
    failed: bool = False


def run_on_cluster(client: Client, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                   bundle: str | os.PathLike | None = None, config: RunConfig | None = None,
                   file_config: FileConfig | None = None, options: ClusterOptions = ClusterOptions(),
                   progress: Callable[[FileResult], None] | None = None,
                   on_start: Callable[[int], None] | None = None) -> ClusterReport:
    """Segment `inputs` (files, folders, globs) on the workers of `client` into `out_dir`, with
    the products and summary.csv of `nseg-infer run` (same `bundle`, `config` and `file_config`).

    Each file is one task; an image above `options.split_px` pixels is split into its instance
    blocks (UNet bundles; others run it as one task, with a warning), its label image assembled
    as OME-Zarr in the work folder, from which the products are written. Finished files and blocks are recorded in
    `OUT/nseg-cluster.json`; a run started again redoes only the rest. `progress` is called with
    each file's result as it finishes, `on_start` with the number of files found."""
    config, file_config = config or RunConfig(), file_config or FileConfig()
    b = load_bundle(bundle)
    # Validates the settings against the bundle here, before any task is sent; the client plans
    # large images and never runs the model, so no session is loaded on it.
    planner = Planner(b, config)
    check_options(b, file_config.inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, missing = expand_inputs(inputs)
    if on_start is not None:
        on_start(len(files))
    # One cluster run per output folder: the manifest has one writer.
    with exclusive_lock(out / LOCK_NAME,
                        lambda holder: ClusterError(f"{out}: another cluster run is writing here ({holder})")):
        clean_temp_files(out)  # leftovers of tasks killed in an earlier run
        if (out / WORK_DIR).is_dir():
            clean_temp_files(out / WORK_DIR)
        run = _Run(client, planner, file_config, str(b.path.resolve()), out, options,
                   Manifest(out / MANIFEST_NAME, fingerprint(b.sha256, config, file_config, split_px=options.split_px)),
                   progress)
        report = run.execute(files)
        clean_temp_files(out)  # of workers that died in this one
        if (out / WORK_DIR).is_dir():
            clean_temp_files(out / WORK_DIR)
        with contextlib.suppress(OSError):  # kept while it holds blocks of an unfinished image
            (out / WORK_DIR).rmdir()
    results = tuple(missing) + report.results
    write_summary(out / "summary.csv", [r.summary_row() for r in results])
    return dataclasses.replace(report, results=results)


class _Run:
    """The client's loop: submit, collect as tasks finish, submit what a finished step unlocks."""

    def __init__(self, client: Client, planner: Planner, file_config: FileConfig, bundle: str, out: Path,
                 options: ClusterOptions, manifest: Manifest, progress: Callable[[FileResult], None] | None) -> None:
        self.client, self.planner, self.bundle, self.out = client, planner, bundle, out
        self.config, self.file_config = planner.config, file_config
        self.options, self.manifest, self.progress = options, manifest, progress
        self.token = uuid.uuid4().hex[:12]  # task keys unique on a shared scheduler
        self.results: dict[int, FileResult] = {}
        self.tasks: dict[str, tuple[str, int, int]] = {}  # key -> (kind, file order, block)
        self.large: dict[int, _Large] = {}
        self.paths: list[Path] = []
        self.warnings: list[str] = []
        self.reused: list[Path] = []
        self.blocks_computed = self.blocks_reused = 0
        self.saved = 0.0

    def _submit(self, kind: str, order: int, block: int, fn: Callable, *args: object) -> Future:
        key = f"nseg-{kind}-{self.token}-{order}-{block}"
        self.tasks[key] = (kind, order, block)
        return self.client.submit(fn, *args, key=key, retries=self.options.retries, pure=False)

    def _submit_all(self, tasks: list[tuple], rng: random.Random | None) -> list[Future]:
        if rng is not None:  # a seeded random order: results must not depend on it
            rng.shuffle(tasks)
        return [self._submit(*t) for t in tasks]

    def _file_args(self, i: int) -> tuple:
        return ("file", i, 0, file_task, self.bundle, self.config, self.file_config, str(self.paths[i].resolve()),
                str(self.out.resolve()))

    def _warn(self, msg: str) -> None:
        log.warning("%s", msg)
        self.warnings.append(msg)

    def execute(self, files: list[Path]) -> ClusterReport:
        from distributed import as_completed

        self.paths = files
        rng = random.Random(self.options.shuffle_seed) if self.options.shuffle_seed is not None else None
        small: list[int] = []
        large: list[int] = []
        for i, p in enumerate(files):
            done = self.manifest.finished(p)
            if done is not None:
                self.results[i] = done
                self.reused.append(p)
            else:
                (large if self._plane_pixels(p) > self.options.split_px else small).append(i)
        # Small files go out first, so the workers start while the client reads the large images
        # for their normalisation (one whole-image pass each).
        futures = self._submit_all([self._file_args(i) for i in small], rng)
        for i in large:
            image = self._plan(files[i])
            if image is None:
                futures += self._submit_all([self._file_args(i)], rng)
                continue
            job = self.large[i] = _Large(i, image)
            # A recorded block counts only while its file is there.
            job.done = {k: v for k, v in self.manifest.finished_blocks(files[i], image.plan).items()
                        if image.block_file(k).exists()}
            self.blocks_reused += len(job.done)
            job.pending = len(image.blocks) - len(job.done)
            futures += self._submit_all([("block", i, blk.index, block_task, self.bundle, self.config, self.file_config, image,
                                          blk.index)
                                         for blk in image.blocks if blk.index not in job.done], rng)
            if job.pending == 0:  # every block finished in an earlier run
                futures += self._assemble(job)
        queue = as_completed(futures)
        for batch in queue.batches():
            for fut in batch:
                for new in self._finished(fut):
                    queue.add(new)
                fut.release()
            # The manifest is rewritten whole: at most once a second on runs of many small files
            # (a kill loses at most that second's records; those files are simply done again).
            if time.monotonic() - self.saved >= SAVE_INTERVAL_S:
                self.manifest.save()
                self.saved = time.monotonic()
        self.manifest.save()
        return ClusterReport(tuple(self.results[i] for i in range(len(files))), tuple(self.reused),
                             self.blocks_computed, self.blocks_reused,
                             tuple((self.paths[j.order], c) for j in self.large.values() if (c := _cut(j))),
                             tuple(self.warnings))

    def _plane_pixels(self, p: Path) -> int:
        """Pixels of the plane a file task would read, from its header under the run's limits; 0
        for a file that cannot be read so (its file task reports it as `nseg-infer run` does)."""
        try:
            h, w = header_shape(p, self.file_config.max_pixels)
        except Exception:
            return 0
        return h * w

    def _plan(self, p: Path) -> LargeImage | None:
        try:
            plan = plan_large_image(self.planner, self.file_config, p.resolve(), self.out.resolve(),
                                    measure=self._nuclei_size)
        except Exception as e:  # the file task will report it, naming the file
            log.debug("%s: no block plan (%s); one task", p, e)
            return None
        if isinstance(plan, str):
            self._warn(f"{p}: one task for the whole image: {plan}")
            return None
        return plan

    def _nuclei_size(self, p: Path) -> SizeEstimate:
        """A large image's nucleus size, measured on a worker before its blocks are planned."""
        return self.client.submit(nuclei_size_task, self.bundle, self.config, self.file_config, str(p),
                                  retries=self.options.retries, pure=False).result()

    def _finished(self, fut: Future) -> list[Future]:
        kind, order, block = self.tasks.pop(fut.key)
        try:
            value = fut.result()
        except Exception as e:  # a task that raised after its retries, or whose workers kept dying
            return self._failed(order, e)
        if kind == "file":
            self._file_done(order, value)
            return []
        job = self.large[order]
        if kind == "block":  # recorded even when another block failed: a later run reuses it
            job.done[block] = value
            job.seconds += value.seconds
            self.blocks_computed += 1
            self.manifest.record_block(self.paths[order], job.image.plan, block, value.n, value.cut)
        if job.failed:
            return []
        job.pending -= 1
        if kind == "block":
            return self._assemble(job) if job.pending == 0 else []
        if kind == "assemble":
            return self._measure(job) if job.pending == 0 else []
        if kind == "measure":
            job.parts[block] = value
            job.seconds += value.seconds
            return [self._products(job)] if job.pending == 0 else []
        # products: the image's work folder (block results, the assembled labels) is done with
        if value.ok:
            shutil.rmtree(job.image.work, ignore_errors=True)
        cut = _cut(job)
        if cut:
            self._warn(f"{self.paths[order]}: {cut} foreground clumps exceed the block margin "
                       f"({self.config.margin} px); they may differ from a one-pass result")
        self._file_done(order, value)
        return []

    def _file_done(self, order: int, r: FileResult) -> None:
        # Workers were sent absolute paths (their working folder may differ); the summary names
        # inputs and products as the user gave them, as `nseg-infer run` does.
        r = dataclasses.replace(r, input=self.paths[order], outputs=tuple(self.out / o.name for o in r.outputs))
        self.results[order] = r
        if r.ok:
            self.manifest.record_file(r)
        if self.progress is not None:
            self.progress(r)

    def _failed(self, order: int, e: BaseException) -> list[Future]:
        job = self.large.get(order)
        if job is not None:
            if job.failed:
                return []
            job.failed = True
        self._file_done(order, failed(self.paths[order], e, 0.0, 0, 0, ""))
        return []

    def _array(self, job: _Large) -> Path:
        from nseg_infer.sinks.omezarr import array_path

        return array_path(job.image.labels_work)

    def _total(self, job: _Large) -> int:
        return sum(_counts(job))

    def _assemble(self, job: _Large) -> list[Future]:
        """All blocks done: global ids by prefix sum, an empty zarr, one task per chunk."""
        image = job.image
        counts = _counts(job)
        offsets = label_offsets(counts)
        create_labels(image.labels_work, image.shape, self.config.block, label_dtype(sum(counts)),
                      pixel_size_um=image.pixel_size_um)
        array = str(self._array(job))
        job.pending = len(image.blocks)
        return [self._submit("assemble", job.order, blk.index, assemble_task, image, blk.index, offsets, array)
                for blk in image.blocks]


    def _measure(self, job: _Large) -> list[Future]:
        """The zarr labels complete: one task per product block measures the nuclei it owns (when
        a chosen product takes them: CSV, GeoJSON, ROIs), else the products at once."""
        if not part_sinks(self.file_config.products):
            return [self._products(job)]
        image = job.image
        blocks = product_blocks(image.shape, sink_options(self.config, self.file_config, image.shape))
        job.pending = len(blocks)
        array, total = str(self._array(job)), self._total(job)
        return [self._submit("measure", job.order, b.index, measure_task, self.bundle, self.config, self.file_config, image,
                             b.index,
                             array, total) for b in blocks]

    def _products(self, job: _Large) -> Future:
        """The files of the image, from the zarr labels and its blocks' parts, by one task."""
        return self._submit("products", job.order, 0, products_task, self.bundle, self.config, self.file_config, job.image,
                            str(self.out.resolve()), str(self._array(job)), self._total(job),
                            tuple(job.parts[k] for k in sorted(job.parts)), job.seconds)


def _counts(job: _Large) -> list[int]:
    return [v.n if isinstance(v, BlockDone) else v[0] for _, v in sorted(job.done.items())]


def _cut(job: _Large) -> int:
    return sum(v.cut if isinstance(v, BlockDone) else v[1] for v in job.done.values())
