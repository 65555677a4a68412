"""From an opened file to labels at the file's own size: channels, pixel size, scale.

    file (all channels) -> channels the model sees (`channels.model_view`) -> rescaled to the
    model's training scale (`scale.RescaledSource`) -> Predictor.predict -> labels back at the
    input's size (`scale.labels_to_input`)

Shared by `Predictor.process_file` (the CLI, the folder watch) and `nseg_infer.segment` (the
Python API and the napari plugin), so all give the same labels for the same options.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nseg_infer.channels import ChannelChoice, model_view
from nseg_infer.imageio import ImageSource
from nseg_infer.scale import Rescale, RescaledSource, labels_to_input, rescale_for

if TYPE_CHECKING:
    from nseg_infer.run import Predictor

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


def _canvas(shape: tuple[int, int], large: bool, work_dir: Path | None, temps: list[Path]) -> np.ndarray:
    if not large:
        return np.zeros(shape, np.uint32)
    fd, name = tempfile.mkstemp(prefix=".nseg-canvas.", suffix=".tmp", dir=work_dir)
    os.close(fd)
    temps.append(Path(name))
    return np.memmap(name, dtype=np.uint32, mode="w+", shape=shape)


@contextlib.contextmanager
def segment_source(predictor: Predictor, raw: ImageSource, opts: InputOptions = InputOptions(), *,
                   work_dir: Path | None = None) -> Iterator[Segmented]:
    """Segment `raw` with `opts`; disk-backed canvases of large images live until the block ends."""
    view = model_view(raw, opts.choice)
    px = pixel_size(raw, opts.pixel_size_um)
    rescale = rescale_for(raw.path, predictor.bundle.scale, diameter=opts.diameter, pixel_size_um=px)
    h, w = raw.shape
    temps: list[Path] = []
    try:
        if rescale.identity:
            pred = predictor.predict(view, work_dir=work_dir)
            if "canvas_file" in pred.extra:
                temps.append(Path(pred.extra["canvas_file"]))
            labels, n, scores = pred.labels, pred.max_label, pred.scores
        else:
            shape = rescale.model_shape(h, w)
            log.info("%s: rescaled %dx%d -> %dx%d for the model (%s)", raw.path, h, w, *shape, rescale.reason)
            pred = predictor.predict(RescaledSource(view, shape), work_dir=work_dir)
            if "canvas_file" in pred.extra:
                temps.append(Path(pred.extra["canvas_file"]))
            labels = _canvas((h, w), h * w > predictor.config.large_px, work_dir, temps)
            n, scores = labels_to_input(pred.labels, labels, pred.scores)
        channels = raw if raw.info.channel_axis == "C" and raw.channels > 1 else None
        yield Segmented(labels, n, scores, pred.norm, view, channels, px, rescale)
    finally:
        pred = labels = None  # drop memmaps before their files go
        for t in temps:
            t.unlink(missing_ok=True)
