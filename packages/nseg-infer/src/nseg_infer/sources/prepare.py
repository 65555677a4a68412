"""From an opened file to labels at the file's own size: channels, pixel size, scale.

    file (all channels) -> channels the model sees (`channels.model_view`) -> rescaled to the
    model's training scale (`scale.RescaledSource`) -> Predictor.predict -> labels back at the
    input's size (`scale.labels_to_input`)

`segment_source` does it all for one image; `model_input` and `segmented` are its two halves, so
`FileRunner.process_files` (the folder watch) can segment many images in one `predict_many`
between them. Shared by `FileRunner.process_file` (the CLI), the folder watch and
`nseg_infer.segment` (the Python API and the napari plugin), so all give the same labels for the
same options. Label canvases are the Predictor's `canvas` blocks: a large image's temp file lives
until the `with segment_source(...)` block ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from nseg_data.errors import DataError

from nseg_infer.sources.channels import ChannelChoice, model_view
from nseg_infer.sources.imageio import ImageSource
from nseg_infer.sources.scale import Rescale, RescaledSource, labels_to_input, rescale_for

if TYPE_CHECKING:
    from nseg_infer.engine.predictor import Prediction, Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputOptions:
    """How to read an image: which channels (`choice`), its pixel size in µm if the file's
    metadata should be overridden, and the typical nucleus diameter in pixels (rescaling)."""

    choice: ChannelChoice = field(default_factory=ChannelChoice)
    pixel_size_um: float | None = None
    diameter: float | None = None

    def __post_init__(self) -> None:
        for name in ("pixel_size_um", "diameter"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name.replace('_um', '')} must be > 0, got {v}")


@dataclass(frozen=True)
class Segmented:
    labels: np.ndarray                  # HxW uint32 at the input's size (array or memmap)
    max_label: int
    scores: np.ndarray | None
    norm: tuple[float, float]
    view: ImageSource                   # the channels the model saw, at the input's size
    channels: ImageSource | None        # every channel of a multichannel input (per-channel means)
    pixel_size_um: tuple[float, float] | None
    rescale: Rescale


def pixel_size(src: ImageSource, override: float | None) -> tuple[float, float] | None:
    return (override, override) if override is not None else src.info.pixel_size_um


@dataclass(frozen=True)
class ModelInput:
    """One opened image as the model is given it: the channels it sees (`view`, at the input's
    size), rescaled to the model's training scale (`source`: `view` itself when not rescaled)."""

    view: ImageSource
    source: ImageSource
    channels: ImageSource | None        # every channel of a multichannel input (per-channel means)
    pixel_size_um: tuple[float, float] | None
    rescale: Rescale


def model_input(predictor: Predictor, raw: ImageSource, opts: InputOptions = InputOptions()) -> ModelInput:
    view = model_view(raw, opts.choice)
    px = pixel_size(raw, opts.pixel_size_um)
    rescale = rescale_for(raw.path, predictor.bundle.scale, diameter=opts.diameter, pixel_size_um=px)
    channels = raw if raw.info.channel_axis == "C" and raw.channels > 1 else None
    if rescale.identity:
        return ModelInput(view, view, channels, px, rescale)
    h, w = raw.shape
    shape = rescale.model_shape(h, w)
    log.info("%s: rescaled %dx%d -> %dx%d for the model (%s)", raw.path, h, w, *shape, rescale.reason)
    return ModelInput(view, RescaledSource(view, shape), channels, px, rescale)


def model_shape(predictor: Predictor, shape: tuple[int, int],
                opts: InputOptions = InputOptions()) -> tuple[int, int] | None:
    """The size of the image the model's tiles are cut from, for an input of `shape` read with
    `opts`, known before the file is opened: rescaled as `model_input` rescales it (`--diameter`,
    `--pixel-size`), then the bundle's `resize`. None when it depends on what only opening the
    file tells (its own pixel size against a bundle that records one) or the rescaling is refused
    (that error is the file's, reported when it is segmented)."""
    bundle = predictor.bundle
    if opts.diameter is None and opts.pixel_size_um is None and bundle.scale.pixel_size_um is not None:
        return None
    px = None if opts.pixel_size_um is None else (opts.pixel_size_um, opts.pixel_size_um)
    try:
        rescale = rescale_for(Path(), bundle.scale, diameter=opts.diameter, pixel_size_um=px)
    except DataError:
        return None
    resize = bundle.preprocessing.resize
    if resize is not None:  # the whole (rescaled) image is resized to resize x resize
        return resize, resize
    return shape if rescale.identity else rescale.model_shape(*shape)


@contextlib.contextmanager
def segment_source(predictor: Predictor, raw: ImageSource, opts: InputOptions = InputOptions(), *,
                   work_dir: Path | None = None) -> Iterator[Segmented]:
    """Segment `raw` with `opts`; disk-backed canvases of large images live until the block ends."""
    inp = model_input(predictor, raw, opts)
    with predictor.canvas(inp.source.shape, work_dir=work_dir) as canvas:
        pred = predictor.predict(inp.source, labels=canvas)
        with segmented(predictor, inp, pred, work_dir=work_dir) as seg:
            yield seg


@contextlib.contextmanager
def segmented(predictor: Predictor, inp: ModelInput, pred: Prediction, *,
              work_dir: Path | None = None) -> Iterator[Segmented]:
    """`pred`, the prediction for `inp.source`, as a segmentation at the input's size."""
    def result(labels: np.ndarray, n: int, scores: np.ndarray | None) -> Segmented:
        return Segmented(labels, n, scores, pred.norm, inp.view, inp.channels, inp.pixel_size_um, inp.rescale)

    if inp.rescale.identity:
        yield result(pred.labels, pred.max_label, pred.scores)
        return
    with predictor.canvas(inp.view.shape, work_dir=work_dir) as labels:
        n, scores = labels_to_input(pred.labels, labels, pred.scores)
        yield result(labels, n, scores)
