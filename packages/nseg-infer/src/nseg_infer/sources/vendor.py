"""Vendor microscope files (Zeiss CZI, Nikon ND2) through bioio and its reader plugins.

bioio is an optional extra (`pip install 'nseg-infer[formats]'`), imported only when such a file
is opened, so the runtime stays small. bioio presents every file as TCZYX (plus S for colour
samples) with lazily loaded planes; a window is read from its dask array, so a large mosaic is
decoded chunk by chunk rather than whole.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from nseg_data.errors import DataError

from nseg_infer.regions import ArraySource, ImageInfo, ImageSource, Window
from nseg_infer.sources.formats import MAX_PIXELS, check_pixels
from nseg_infer.sources.imageinfo import choose_planes

log = logging.getLogger(__name__)

EXTRA = "pip install 'nseg-infer[formats]'"
PLUGINS = {".czi": "bioio-czi", ".nd2": "bioio-nd2"}


class VendorSource(ImageSource):
    """One 2-D plane (all channels) of a bioio image, read window by window."""

    is_region_reader = True

    def __init__(self, path: Path, data, info: ImageInfo, channel_last: bool) -> None:
        self.path = path
        self._data = data  # dask array, CYX (or YXS for colour samples)
        self._channel_last = channel_last
        self.info = info
        if channel_last:
            self.height, self.width, self.channels = (int(n) for n in data.shape)
        else:
            self.channels, self.height, self.width = (int(n) for n in data.shape)
        self.dtype = np.dtype(data.dtype)

    def read_channels(self, window: Window, channels: tuple[int, ...]) -> np.ndarray:
        try:
            if self._channel_last:
                part = self._data[window.y0:window.y1, window.x0:window.x1][..., list(channels)]
                return np.asarray(part.compute())
            part = self._data[list(channels), window.y0:window.y1, window.x0:window.x1]
            return np.moveaxis(np.asarray(part.compute()), 0, -1)
        except Exception as e:
            raise DataError(self.path, f"cannot read region {window} (truncated or corrupt file): {e}") from e

    def read(self, window: Window) -> np.ndarray:
        return self.read_channels(window, tuple(range(self.channels)))


def _bioimage(path: Path):
    try:
        from bioio import BioImage
    except ImportError as e:
        raise DataError(path, f"reading {path.suffix} files needs the optional formats extra: {EXTRA}") from e
    try:
        return BioImage(path)
    except ImportError as e:
        raise DataError(path, f"reading {path.suffix} files needs {PLUGINS.get(path.suffix.lower(), 'a bioio reader plugin')}"
                              f": {EXTRA}") from e
    except Exception as e:
        # bioio says "does not support the image" both for corrupt files and missing plugins.
        plugin = PLUGINS.get(path.suffix.lower(), "a bioio reader plugin")
        raise DataError(path, f"cannot read {path.suffix} file (corrupt, truncated, or {plugin} is missing: "
                              f"{EXTRA}): {str(e).splitlines()[0][:300]}") from e


def _dims(path: Path, img, max_pixels: int) -> tuple[str, tuple[int, ...]]:
    """The file's axes and their sizes, its plane refused above `max_pixels` (from the file's
    metadata, before any plane is read)."""
    dims = img.dims
    order = str(dims.order)
    sizes = tuple(int(getattr(dims, a)) for a in order)
    d = dict(zip(order, sizes, strict=True))
    check_pixels(path, d.get("Y", 0), d.get("X", 0), max_pixels, f"{path.suffix[1:].upper()} metadata")
    return order, sizes


def _metadata_error(path: Path, e: Exception) -> DataError:
    return DataError(path, f"cannot read {path.suffix} metadata (corrupt or unsupported file): {e}")


def vendor_shape(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of the plane `open_vendor` reads, from the file's metadata alone."""
    img = _bioimage(path)
    try:
        order, sizes = _dims(path, img, max_pixels)
    except DataError:
        raise
    except Exception as e:
        raise _metadata_error(path, e) from e
    d = dict(zip(order, sizes, strict=True))
    return d["Y"], d["X"]


def open_vendor(path: Path, region_threshold_px: int, max_pixels: int = MAX_PIXELS) -> ImageSource:
    """The first scene, first time point, every channel; a z stack is refused (`choose_planes`).
    Planes up to `region_threshold_px` are loaded whole, larger ones read by window."""
    img = _bioimage(path)
    try:
        order, sizes = _dims(path, img, max_pixels)
        use, notes = choose_planes(path, order, sizes)
        if len(img.scenes) > 1:
            notes += (f"{len(img.scenes)} scenes: using the first ({img.scenes[0]})",)
        samples = dict(zip(order, sizes, strict=True)).get("S", 1)
        n_c = dict(zip(order, sizes, strict=True)).get("C", 1)
        if samples > 1 and n_c > 1:
            raise DataError(path, f"both channels (C={n_c}) and colour samples (S={samples}) (axes {order}): "
                                  "not supported")
        fixed = {a: use[a] for a in order if a in use}
        if samples > 1:
            data = img.get_image_dask_data("YXS", **fixed)
        else:
            data = img.get_image_dask_data("CYX", **fixed)
        pps = img.physical_pixel_sizes
        px = (float(pps.Y), float(pps.X)) if pps.Y and pps.X and pps.Y > 0 and pps.X > 0 else None
        names = tuple(str(n) for n in (img.channel_names or ())) if n_c > 1 else ()
        info = ImageInfo(order, sizes, "S" if samples > 1 else "C" if n_c > 1 else "",
                         names if len(names) == n_c else (), px, notes)
    except DataError:
        raise
    except Exception as e:
        raise _metadata_error(path, e) from e
    for note in notes:
        log.info("%s: %s", path, note)
    src = VendorSource(path, data, info, channel_last=samples > 1)
    if src.height * src.width > region_threshold_px:
        return src
    return ArraySource(src.read_all(), path, info)
