"""The words the sources and the engine both speak: a `Window` of an image, what a file holds
besides pixels (`ImageInfo`), the `ImageSource` protocol (an image read window by window) and
`ArraySource` (one in memory).

This module is the one door between `nseg_infer.sources` (files and arrays to regions) and
`nseg_infer.engine` (regions to labels): both import it, it imports neither, so neither side
imports the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nseg_data.errors import DataError


@dataclass(frozen=True)
class Window:
    y0: int
    y1: int
    x0: int
    x1: int

    def __post_init__(self) -> None:
        if self.y1 < self.y0 or self.x1 < self.x0:
            raise ValueError(f"empty-negative window {self}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def clip(self, height: int, width: int) -> Window:
        return Window(max(self.y0, 0), min(self.y1, height), max(self.x0, 0), min(self.x1, width))

    def intersects(self, other: Window) -> bool:
        return self.y0 < other.y1 and other.y0 < self.y1 and self.x0 < other.x1 and other.x0 < self.x1

    def contains(self, y: float, x: float) -> bool:
        return self.y0 <= y < self.y1 and self.x0 <= x < self.x1


@dataclass(frozen=True)
class ImageInfo:
    """Axes of the file (e.g. "TCZYX"), their sizes, which axis holds channels ("C": separate
    planes, as fluorescence files store them; "S": interleaved samples, as RGB; "" for one
    channel), channel names, pixel size (y, x) in µm or None, and notes on the plane used."""

    axes: str = "YX"
    sizes: tuple[int, ...] = ()
    channel_axis: str = ""
    channel_names: tuple[str, ...] = ()
    pixel_size_um: tuple[float, float] | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.channel_axis not in ("", "C", "S"):
            raise ValueError(f"channel_axis must be '', 'C' or 'S', got {self.channel_axis!r}")
        if self.sizes and len(self.sizes) != len(self.axes):
            raise ValueError(f"axes {self.axes!r} and sizes {self.sizes} differ in length")
        if self.pixel_size_um is not None and not all(v > 0 and math.isfinite(v) for v in self.pixel_size_um):
            raise ValueError(f"pixel size must be positive, got {self.pixel_size_um}")

    def describe(self) -> str:
        shape = " ".join(f"{a}={n}" for a, n in zip(self.axes, self.sizes, strict=True)) if self.sizes else ""
        text = f"axes {self.axes}" + (f" ({shape})" if shape else "")
        if self.channel_names:
            text += "; channels " + ", ".join(f"{i} {n!r}" for i, n in enumerate(self.channel_names))
        return text


class ImageSource:
    """An image of known size whose pixels are read by window (HxWxC, original dtype)."""

    path: Path
    height: int
    width: int
    channels: int
    dtype: np.dtype
    is_region_reader: bool = False
    info: ImageInfo = ImageInfo()

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def read(self, window: Window) -> np.ndarray:
        raise NotImplementedError

    def read_channels(self, window: Window, channels: tuple[int, ...]) -> np.ndarray:
        """HxWxlen(channels); sources whose channels are separate planes read only those."""
        return self.read(window)[..., list(channels)]

    def read_all(self) -> np.ndarray:
        return self.read(Window(0, self.height, 0, self.width))

    def check_complete(self) -> None:
        """Raise DataError if pixel data of the plane(s) read lies beyond the end of the file (a
        file still being written). In-memory sources were decoded whole when opened, so they are."""

    def close(self) -> None:
        pass

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArraySource(ImageSource):
    """An in-memory HxWxC image. Without `info`, more than one channel is read as interleaved
    samples (RGB, RGBA) unless `channel_axis="C"` says they are separate channels."""

    def __init__(self, array: np.ndarray, path: str | Path = "<array>", info: ImageInfo | None = None, *,
                 channel_axis: str = "S") -> None:
        a = np.asarray(array)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[0] < 1 or a.shape[1] < 1 or a.shape[2] < 1:
            raise DataError(path, f"expected a 2-D image (HxW or HxWxC), got shape {np.shape(array)}")
        self.array = a
        self.path = Path(path)
        self.height, self.width, self.channels = a.shape
        self.dtype = a.dtype
        if info is None:
            multi = self.channels > 1
            info = ImageInfo(f"YX{channel_axis}" if multi else "YX",
                             a.shape if multi else a.shape[:2], channel_axis if multi else "")
        self.info = info

    def read(self, window: Window) -> np.ndarray:
        return self.array[window.slices]
