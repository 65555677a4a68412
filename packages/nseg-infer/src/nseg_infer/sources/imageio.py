"""Opening an image file: PNG and JPEG decoded in memory, TIFF through `sources.tiff` (large
ones read region by region), CZI and ND2 through the optional `formats` extra
(`nseg_infer.sources.vendor`). Which channels the model sees is `nseg_infer.sources.channels`'
job. Every failure is a `DataError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nseg_data.errors import DataError

from nseg_infer.regions import ArraySource, ImageSource
from nseg_infer.sources.formats import (
    LARGE_IMAGE_PX,
    MAX_PIXELS,
    PNG,
    TIFF,
    VENDOR,
    check_file,
    check_pixels,
    image_suffix,
    jpeg_size,
    png_size,
)
from nseg_infer.sources.tiff import open_tiff, tiff_shape
from nseg_infer.sources.vendor import open_vendor, vendor_shape


def _decode_small(path: Path) -> np.ndarray:
    import imagecodecs

    data = path.read_bytes()
    suffix = image_suffix(path)
    try:
        if suffix in PNG:
            return imagecodecs.png_decode(data)
        return imagecodecs.jpeg8_decode(data)
    except Exception as e:
        # imagecodecs' messages are cryptic ("input stream too small"), so say it plainly.
        raise DataError(path, f"cannot decode {suffix[1:].upper()} (truncated or corrupt file): {e}") from e


def _small_shape(p: Path, max_pixels: int) -> tuple[int, int]:
    h, w = png_size(p) if image_suffix(p) in PNG else jpeg_size(p)
    check_pixels(p, h, w, max_pixels)
    return h, w


def header_shape(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of the plane `open_image` would read, from the file's header or metadata
    alone (no pixel decoded), refused above `max_pixels` as `open_image` refuses it."""
    p = Path(path)
    check_file(p)
    suffix = image_suffix(p)
    if suffix in TIFF:
        return tiff_shape(p, max_pixels)
    if suffix in VENDOR:
        return vendor_shape(p, max_pixels)
    return _small_shape(p, max_pixels)


def open_image(path: str | Path, *, region_threshold_px: int = LARGE_IMAGE_PX,
               max_pixels: int = MAX_PIXELS) -> ImageSource:
    """Open any supported image; large TIFFs come back as region readers, the rest in memory.
    An image whose header claims more than `max_pixels` pixels is refused before decoding."""
    p = Path(path)
    check_file(p)
    suffix = image_suffix(p)
    if suffix in TIFF:
        return open_tiff(p, region_threshold_px, max_pixels)
    if suffix in VENDOR:
        return open_vendor(p, region_threshold_px, max_pixels)
    _small_shape(p, max_pixels)
    return ArraySource(_decode_small(p), p)


def read_image(path: str | Path) -> np.ndarray:
    """Whole image, HxWxC in its own dtype (small images and tests)."""
    with open_image(path, region_threshold_px=1 << 62, max_pixels=1 << 62) as src:
        return src.read_all()
