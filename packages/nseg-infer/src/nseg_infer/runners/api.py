"""`nseg_infer.segment`: one call from an image (array or file) to labels and measurements.

The same path as `nseg-infer run` (`files.segment_source`, `outputs.measure_all`), so a script,
a notebook or the napari plugin gets exactly the labels and table rows the command line writes.
The model (an ONNX Runtime session) is loaded once per (bundle, device) and reused.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nseg_infer.regions import ArraySource, ImageInfo, ImageSource
from nseg_infer.sources.imageio import open_image

if TYPE_CHECKING:
    from nseg_infer.engine.predictor import Predictor
    from nseg_infer.sources.options import InputOptions

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Segmentation:
    """`labels`: HxW uint32 at the input's size (0 background, 1..n nuclei); `measurements`: one
    dict per nucleus with the CSV's columns; `pixel_size_um`: (y, x) or None; `rescale_factor`:
    model pixels per input pixel (1.0 when not rescaled); `info`: what the file held."""

    labels: np.ndarray
    measurements: list[dict]
    pixel_size_um: tuple[float, float] | None
    rescale_factor: float
    info: ImageInfo

    def __post_init__(self) -> None:
        if self.labels.ndim != 2:
            raise ValueError(f"labels must be 2-D, got shape {self.labels.shape}")

    @property
    def n_nuclei(self) -> int:
        return len(self.measurements)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.measurements[0]) if self.measurements else ()


@functools.lru_cache(maxsize=4)
def _predictor(model: str | None, device: str):
    from nseg_infer.engine.predictor import Predictor, RunConfig

    return Predictor(model, RunConfig(device=device))


def _source(image: PathLike | np.ndarray | ImageSource, name: str | None, channel_axis: int | None) -> ImageSource:
    if isinstance(image, ImageSource):
        return image
    if isinstance(image, str | os.PathLike):
        return open_image(image)
    a = np.asarray(image)
    if channel_axis is None:
        if a.ndim == 3 and a.shape[2] not in (1, 3, 4):
            raise ValueError(f"an array of shape {a.shape} is not HxW or HxWx3: for separate channels give "
                             "channel_axis= (e.g. 0 for CYX) and channel= or channels=")
        return ArraySource(a, name or "<array>")
    if a.ndim != 3:
        raise ValueError(f"channel_axis needs a 3-D array (e.g. CYX), got shape {a.shape}")
    if not -3 <= channel_axis < 3:
        raise ValueError(f"channel_axis {channel_axis} is not an axis of a 3-D array (0, 1 or 2)")
    # Errors describe the array as the caller laid it out (CYX for channel_axis=0), not as moved.
    axes = "YX"[: channel_axis % 3] + "C" + "YX"[channel_axis % 3:]
    info = ImageInfo(axes, tuple(int(n) for n in a.shape), "C")
    return ArraySource(np.moveaxis(a, channel_axis, -1), name or "<array>", info)


def segment(image: PathLike | np.ndarray, *, model: PathLike | None = None, channel: int | None = None,
            channels: Sequence[int] | str | None = None, pixel_size: float | None = None,
            diameter: float | None = None, device: str = "auto", channel_axis: int | None = None,
            name: str | None = None) -> Segmentation:
    """Segment nuclei in `image`: a file path (any format `nseg-infer run` reads) or an array
    (HxW, HxWx3 colour; with `channel_axis`, an array whose axis `channel_axis` holds separate
    channels, e.g. 0 for CYX). `channel`/`channels`, `pixel_size` (µm) and `diameter` (px) work
    as `--channel`, `--channels`, `--pixel-size` and `--diameter`; `model` is a bundle folder
    (default: the packaged model). `name` fills the table's `image` column (default: the file's
    name, or "<array>")."""
    from nseg_infer.sources.channels import PYTHON, ChannelChoice
    from nseg_infer.sources.options import InputOptions

    opts = InputOptions(ChannelChoice.parse(channel, channels, wording=PYTHON), pixel_size, diameter)
    return segment_with(_predictor(str(model) if model is not None else None, device), image, opts,
                        channel_axis=channel_axis, name=name)


def segment_with(predictor: Predictor, image: PathLike | np.ndarray | ImageSource, opts: InputOptions, *,
                 channel_axis: int | None = None, name: str | None = None) -> Segmentation:
    """`segment` with a Predictor the caller made (its own backend, e.g. one that reports
    progress) and `options.InputOptions` (whose `choice.wording` names the caller's options in
    errors)."""
    from nseg_infer.runners.files import segment_source
    from nseg_infer.sinks.names import stem
    from nseg_infer.sinks.outputs import MeasureOptions, measure_all

    src = _source(image, name, channel_axis)
    label = name or (stem(Path(image)) if isinstance(image, str | os.PathLike) else "<array>")
    with src, segment_source(predictor, src, opts) as seg:
        labels = np.array(seg.labels, dtype=np.uint32)
        rows = measure_all(labels, seg.view, scores=seg.scores,
                           opts=MeasureOptions(label, seg.pixel_size_um, seg.channels))
        return Segmentation(labels, rows, seg.pixel_size_um, seg.rescale.factor, src.info)
