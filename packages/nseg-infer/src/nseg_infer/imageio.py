"""Image readers (PNG, JPEG, TIFF incl. multi-page, OME, BigTIFF) and atomic writers.

A large tiled or stripped TIFF is never decoded whole: `TiffRegionSource` decodes only the TIFF
segments (tiles or strips) that intersect the requested window, using tifffile's own segment
decoder, so no zarr is needed. Every failure is a `DataError` naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from nseg_data.atomic import publish_mode
from nseg_data.errors import DataError

from nseg_infer.tiling import Window

log = logging.getLogger(__name__)

PNG = (".png",)
JPEG = (".jpg", ".jpeg")
TIFF = (".tif", ".tiff")
SUPPORTED = PNG + JPEG + TIFF
# Above this many pixels a TIFF is read window by window instead of into memory.
REGION_THRESHOLD_PX = 8192 * 8192


def image_suffix(path: Path) -> str:
    return path.suffix.lower()


class ImageSource:
    """An image of known size whose pixels are read by window (HxWxC, original dtype)."""

    path: Path
    height: int
    width: int
    channels: int
    dtype: np.dtype
    is_region_reader: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def read(self, window: Window) -> np.ndarray:
        raise NotImplementedError

    def read_all(self) -> np.ndarray:
        return self.read(Window(0, self.height, 0, self.width))

    def close(self) -> None:
        pass

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArraySource(ImageSource):
    def __init__(self, array: np.ndarray, path: str | Path = "<array>") -> None:
        a = np.asarray(array)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[0] < 1 or a.shape[1] < 1:
            raise DataError(path, f"expected a 2-D image (HxW or HxWxC), got shape {np.shape(array)}")
        if a.shape[2] not in (1, 2, 3, 4):
            raise DataError(path, f"unsupported channel count {a.shape[2]}")
        self.array = a
        self.path = Path(path)
        self.height, self.width, self.channels = a.shape
        self.dtype = a.dtype

    def read(self, window: Window) -> np.ndarray:
        return self.array[window.slices]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_file():
        raise DataError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    if image_suffix(path) not in SUPPORTED:
        raise DataError(path, f"unsupported format '{path.suffix}' (supported: {', '.join(SUPPORTED)})")


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


class TiffRegionSource(ImageSource):
    """Reads windows of the first image plane of a TIFF by decoding only the segments it needs."""

    is_region_reader = True

    def __init__(self, path: Path, tf, page) -> None:
        self.path = path
        self._tf = tf
        self._page = page
        axes = page.axes
        shp = dict(zip(axes, page.shape, strict=True))
        self.height, self.width = int(shp["Y"]), int(shp["X"])
        self.channels = int(shp.get("S", 1))
        self.dtype = np.dtype(page.dtype)
        self._planar = page.planarconfig == 2 and self.channels > 1
        if page.is_tiled:
            self._seg_h, self._seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self._seg_h, self._seg_w = int(min(page.rowsperstrip or self.height, self.height)), self.width
        self._rows = -(-self.height // self._seg_h)
        self._cols = -(-self.width // self._seg_w)

    def _segment_ids(self, window: Window) -> Iterator[int]:
        per_plane = self._rows * self._cols
        planes = range(self.channels) if self._planar else range(1)
        for s in planes:
            for r in range(window.y0 // self._seg_h, -(-window.y1 // self._seg_h)):
                for c in range(window.x0 // self._seg_w, -(-window.x1 // self._seg_w)):
                    yield s * per_plane + r * self._cols + c

    def read(self, window: Window) -> np.ndarray:
        out = np.zeros((window.y1 - window.y0, window.x1 - window.x0, self.channels), self.dtype)
        page = self._page
        fh = self._tf.filehandle
        try:
            for idx in self._segment_ids(window):
                offset, count = page.dataoffsets[idx], page.databytecounts[idx]
                if count == 0:
                    continue
                fh.seek(offset)
                data = fh.read(count)
                if len(data) != count:
                    raise ValueError(f"segment {idx} is cut short ({len(data)} of {count} bytes)")
                seg, (s, _d, y, x, _), _shape = page.decode(data, idx, jpegtables=page.jpegtables)
                seg = seg[0]  # drop depth
                sw = Window(y, y + seg.shape[0], x, x + seg.shape[1])
                iy0, iy1 = max(sw.y0, window.y0), min(sw.y1, window.y1, self.height)
                ix0, ix1 = max(sw.x0, window.x0), min(sw.x1, window.x1, self.width)
                if iy0 >= iy1 or ix0 >= ix1:
                    continue
                part = seg[iy0 - y:iy1 - y, ix0 - x:ix1 - x]
                dst = out[iy0 - window.y0:iy1 - window.y0, ix0 - window.x0:ix1 - window.x0]
                if self._planar:
                    dst[..., s] = part[..., 0]
                else:
                    dst[...] = part
        except DataError:
            raise
        except Exception as e:
            raise DataError(self.path, f"cannot read TIFF region {window} (truncated or corrupt file): {e}") from e
        return out

    def close(self) -> None:
        self._tf.close()


def _tiff_page(tf):
    """The first 2-D plane: level 0 of the first series (first channel/time/z of OME stacks)."""
    series = tf.series[0]
    level = series.levels[0] if getattr(series, "levels", None) else series
    page = level.pages[0]
    return page.keyframe if hasattr(page, "keyframe") else page


def open_tiff(path: Path, region_threshold_px: int) -> ImageSource:
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception as e:
        raise DataError(path, f"not a readable TIFF (truncated or corrupt file): {e}") from e
    try:
        page = _tiff_page(tf)
        if "Y" not in page.axes or "X" not in page.axes or set(page.axes) - set("YXS"):
            raise DataError(path, f"unsupported TIFF plane layout {page.axes!r}")
        n_series_planes = len(tf.series[0].pages) if tf.series else 1
        if n_series_planes > 1:
            log.info("%s: %d planes (%s); using the first", path, n_series_planes, tf.series[0].axes)
        if page.shape[page.axes.index("Y")] * page.shape[page.axes.index("X")] > region_threshold_px:
            return TiffRegionSource(path, tf, page)
        arr = page.asarray()
        if page.axes == "SYX":
            arr = np.moveaxis(arr, 0, -1)
        tf.close()
        return ArraySource(arr, path)
    except DataError:
        tf.close()
        raise
    except Exception as e:
        tf.close()
        raise DataError(path, f"cannot read TIFF (truncated or corrupt file): {e}") from e


def open_image(path: str | Path, *, region_threshold_px: int = REGION_THRESHOLD_PX) -> ImageSource:
    """Open any supported image; large TIFFs come back as region readers, the rest in memory."""
    p = Path(path)
    _check_file(p)
    if image_suffix(p) in TIFF:
        return open_tiff(p, region_threshold_px)
    return ArraySource(_decode_small(p), p)


def read_image(path: str | Path) -> np.ndarray:
    """Whole image, HxWxC in its own dtype (small images and tests)."""
    with open_image(path, region_threshold_px=1 << 62) as src:
        return src.read_all()


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """A temp path beside `final`, renamed onto it only if the block succeeds, so a reader (or a
    folder watcher) never sees a half-written output. The suffix is kept for format sniffing."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + final.suffix, dir=final.parent)
    publish_mode(fd)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def atomic_write_text(final: str | Path, text: str) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(final)
