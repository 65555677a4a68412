"""What every sink shares: the labelled image it writes, the blocks it is given, and publishing.

A sink writes one product of one image: `open` it (its temp file is made beside the target),
`add_block` each of the image's product blocks in block order, then `close()`, which finishes the
file and publishes it atomically (`nseg_data.atomic`) and returns the paths written. Used as a
context manager, a sink left unclosed by an error removes its temp file and publishes nothing.
An `OSError` while a sink writes (a full disk) becomes `WriteFailed`, naming its target.

A block (`BlockData`) reads its labels, and measures the nuclei it owns, on first use and once, so
sinks that need nothing of it per block (the labels TIFF) cost nothing and the CSV, GeoJSON and
ROI sinks share one measurement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from nseg_data.atomic import atomic_path

from nseg_infer.engine.tiling import Block
from nseg_infer.regions import ImageSource
from nseg_infer.sinks.nuclei import MeasureOptions, Nuclei, measure_block


@dataclass(frozen=True)
class LabelledImage:
    """An image and its labels, as the sinks write them."""

    name: str                           # the input's stem: CSV `image`, GeoJSON ids, OME name
    labels: Any                         # HxW labels (global ids): an array, a memmap or a zarr array
    max_label: int
    view: ImageSource                   # the channels the model saw, at the labels' size
    norm: tuple[float, float]           # the whole-image normalisation: the overlay's display range
    channels: ImageSource | None = None  # every channel of a multichannel input (per-channel means)
    scores: np.ndarray | None = None    # per label (Mask R-CNN): the CSV's score column
    pixel_size_um: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if tuple(self.labels.shape) != tuple(self.view.shape):
            raise ValueError(f"{self.name}: labels of shape {tuple(self.labels.shape)} for an image of "
                             f"{tuple(self.view.shape)}")
        if self.max_label < 0:
            raise ValueError(f"{self.name}: max_label must be >= 0, got {self.max_label}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.view.shape

    @property
    def measure_options(self) -> MeasureOptions:
        return MeasureOptions(self.name, self.pixel_size_um, self.channels)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.measure_options.columns(self.scores is not None)


class BlockData:
    """One product block of `image`: its labels over the outer window and the nuclei its core owns
    (with outlines when `polygons`), each read or measured on first use."""

    def __init__(self, image: LabelledImage, block: Block, *, polygons: bool) -> None:
        self.image, self.block, self.polygons = image, block, polygons

    @cached_property
    def labels(self) -> np.ndarray:
        return np.asarray(self.image.labels[self.block.outer.slices])

    @cached_property
    def nuclei(self) -> Nuclei:
        im = self.image
        return measure_block(self.labels, im.view, self.block.outer, self.block.core, im.scores,
                             im.measure_options, polygons=self.polygons)


class _Discarded(Exception):
    """Thrown into a sink's temp files to remove them when it is left unclosed."""


class Sink:
    """Base of the sinks. `Sink.open(path, image, **options)` opens one (`start`: its temp files,
    made with `temp`); subclasses implement `start`, `write` (one block) and `finish` (the rest of
    the file, before it is published); callers use `add_block` and `close`."""

    product: ClassVar[str]
    measures: ClassVar[bool] = False    # reads `BlockData.nuclei`
    polygons: ClassVar[bool] = False    # ... and their outlines

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stack = contextlib.ExitStack()
        self._open = True

    @classmethod
    def open(cls, path: Path, image: LabelledImage, **options: Any) -> Sink:
        sink = cls(path)
        with sink._guard():  # a sink that fails to open leaves no temp file either
            sink.start(image, **options)
        return sink

    def start(self, image: LabelledImage) -> None:
        """Hook: make the temp files and write what comes before the blocks."""

    def temp(self, target: Path) -> Path:
        """A temp file beside `target`, renamed onto it when the sink closes."""
        return self._stack.enter_context(atomic_path(target))

    def enter(self, cm: contextlib.AbstractContextManager) -> Any:
        """A resource of the sink (an open file), released before the temp files entered before it
        are published (in reverse order of entry)."""
        return self._stack.enter_context(cm)

    def write(self, block: BlockData) -> None:
        """Hook: one block."""

    def finish(self) -> None:
        """Hook: the rest of the file, once every block is written."""

    def add_block(self, block: BlockData) -> None:
        with self._guard():
            self.write(block)

    def close(self) -> tuple[Path, ...]:
        """Finish and publish; the paths written."""
        with self._guard():
            self.finish()
        self._open = False
        self._stack.close()
        return (self.path,)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except BaseException as e:
            self._open = False
            # Unwinds the temp files with this error: removed, and an OSError becomes WriteFailed
            # naming the target (raised from here), as a failed write inside `atomic_path` does.
            self._stack.__exit__(type(e), e, e.__traceback__)
            raise

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._open:
            self._open = False
            self._stack.__exit__(_Discarded, _Discarded(), None)


class PartSink(Sink):
    """A sink of the nuclei (rows, outlines): each block's share of the file is rendered on its own
    (`part`, a pure function of the block's nuclei), and the parts are written in block order. A
    cluster renders the parts in parallel tasks and one task adds them (`add_part`): the same file,
    byte for byte."""

    measures = True
    part_name: ClassVar[str]            # the kind of part (products that share one render share it)

    @staticmethod
    def part(nuclei: Nuclei, image: LabelledImage) -> bytes:
        raise NotImplementedError

    def write_part(self, part: bytes) -> None:
        """Hook: one block's part into the file."""
        raise NotImplementedError

    def add_part(self, part: bytes) -> None:
        with self._guard():
            self.write_part(part)

    def write(self, block: BlockData) -> None:
        self.write_part(self.part(block.nuclei, block.image))
