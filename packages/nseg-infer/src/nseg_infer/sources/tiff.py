"""TIFF reading: multi-page, OME, BigTIFF, ImageJ hyperstacks and pyramidal TIFF/SVS (level 0).

A large tiled or stripped TIFF is never decoded whole: `TiffRegionSource` decodes only the TIFF
segments (tiles or strips) that intersect the requested window, using tifffile's own segment
decoder, so no zarr is needed. Files whose channels are separate planes (OME-TIFF, ImageJ
hyperstacks) come back HxWxC with every channel. Every failure is a `DataError` naming the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from nseg_data.errors import DataError

from nseg_infer.regions import ArraySource, ImageInfo, ImageSource, Window
from nseg_infer.sources.formats import MAX_PIXELS, check_pixels
from nseg_infer.sources.imageinfo import check_ome, choose_planes, ome_channel_names, tiff_pixel_size

log = logging.getLogger(__name__)

# A TIFF split into more segments (tiles or strips) than this is refused: real scanners write
# 256-1024 px tiles (a 131,072^2 slide has 65,536 of 512 px), while a forged header with 1 x 1
# tiles would make every read loop over billions of segments.
MAX_SEGMENTS = 1 << 22



class TiffRegionSource(ImageSource):
    """Reads windows of one TIFF image plane by decoding only the segments it needs. `page` may be
    a TiffFrame (a later plane of an OME stack): its segments, decoded by its keyframe."""

    is_region_reader = True

    def __init__(self, path: Path, tf, page, info: ImageInfo | None = None) -> None:
        self.path = path
        self._tf = tf
        self._page = page
        self._key = key = getattr(page, "keyframe", None) or page
        axes = key.axes
        shp = dict(zip(axes, key.shape, strict=True))
        self.height, self.width = int(shp["Y"]), int(shp["X"])
        self.channels = int(shp.get("S", 1))
        self.dtype = np.dtype(key.dtype)
        if info is not None:
            self.info = info
        self._planar = key.planarconfig == 2 and self.channels > 1
        if key.is_tiled:
            self._seg_h, self._seg_w = int(key.tilelength), int(key.tilewidth)
        else:
            self._seg_h, self._seg_w = int(min(key.rowsperstrip or self.height, self.height)), self.width
        if self._seg_h < 1 or self._seg_w < 1:
            raise DataError(path, f"TIFF segments of {self._seg_h} x {self._seg_w} pixels (corrupt header)")
        self._rows = -(-self.height // self._seg_h)
        self._cols = -(-self.width // self._seg_w)
        n = self._rows * self._cols * (self.channels if self._planar else 1)
        if n > MAX_SEGMENTS:
            raise DataError(path, f"TIFF claims {n:,} tiles or strips of {self._seg_h} x {self._seg_w} px for a "
                                  f"{self.height} x {self.width} image, above the limit of {MAX_SEGMENTS:,}; refused")
        if len(page.dataoffsets) < n or len(page.databytecounts) < n:
            raise DataError(path, f"TIFF lists {len(page.dataoffsets)} tiles or strips where its size needs {n} "
                                  "(corrupt header)")

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
                seg, (s, _d, y, x, _), _shape = self._key.decode(data, idx, jpegtables=self._key.jpegtables)
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

    def check_complete(self) -> None:
        # Decoding is lazy here, so check instead that every segment of the plane is inside the file.
        page = self._page
        size = self.path.stat().st_size
        end = max((o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)), default=0)
        if end > size:
            raise DataError(self.path, f"TIFF is incomplete (image data runs to byte {end}, file has {size})")

    def close(self) -> None:
        self._tf.close()


class StackedSource(ImageSource):
    """Channels stored as separate TIFF planes, read window by window and stacked HxWxC."""

    is_region_reader = True

    def __init__(self, planes: list[TiffRegionSource], info: ImageInfo) -> None:
        first = planes[0]
        self.path, self.height, self.width, self.dtype = first.path, first.height, first.width, first.dtype
        self.channels = len(planes)
        self.info = info
        self._planes = planes

    def read(self, window: Window) -> np.ndarray:
        return self.read_channels(window, tuple(range(self.channels)))

    def read_channels(self, window: Window, channels: tuple[int, ...]) -> np.ndarray:
        return np.concatenate([self._planes[c].read(window) for c in channels], axis=2)

    def check_complete(self) -> None:
        for plane in self._planes:
            plane.check_complete()

    def close(self) -> None:
        self._planes[0].close()  # the planes share one TiffFile


def _keyframe(page):
    return getattr(page, "keyframe", None) or page


def _tiff_planes(path: Path, tf) -> tuple[list, ImageInfo]:
    """Level 0 of the first series: the page of every channel at the first time point (other
    axes: see `choose_planes`), and what the file holds."""
    series = tf.series[0]
    level = series.levels[0] if getattr(series, "levels", None) else series
    key = _keyframe(level.pages[0])
    axes, sizes = str(level.axes), tuple(int(n) for n in level.shape)
    page_axes = str(key.axes)
    if "Y" not in page_axes or "X" not in page_axes or set(page_axes) - set("YXS") or not axes.endswith(page_axes):
        raise DataError(path, f"unsupported TIFF plane layout {page_axes!r} (series axes {axes!r})")
    outer, outer_sizes = axes[: len(axes) - len(page_axes)], sizes[: len(axes) - len(page_axes)]
    use, notes = choose_planes(path, axes, sizes)
    if len(tf.series) > 1 and not tf.is_svs:  # an SVS's other series are its label and macro photos
        notes += (f"{len(tf.series)} image series in the file: using the first",)
    n_c = dict(zip(outer, outer_sizes, strict=True)).get("C", 1)
    samples = dict(zip(page_axes, key.shape, strict=True)).get("S", 1)
    if n_c > 1 and samples > 1:
        raise DataError(path, f"both separate channels (C={n_c}) and colour samples (S={samples}) in one "
                              f"image (axes {axes}): not supported; save the channels as one colour image")
    pages = []
    for c in range(n_c):
        idx = tuple(c if a == "C" else use[a] for a in outer)
        i = int(np.ravel_multi_index(idx, outer_sizes)) if outer else 0
        page = level.pages[i] if i < len(level.pages) else None
        if page is None:
            raise DataError(path, f"plane {i} (axes {outer} = {idx}) is missing (truncated or corrupt file)")
        pages.append(page)
    names = ome_channel_names(tf) if n_c > 1 else ()
    info = ImageInfo(axes, sizes, "C" if n_c > 1 else "S" if samples > 1 else "",
                     names if len(names) == n_c else (), tiff_pixel_size(tf, key), notes)
    return pages, info


def _plane_array(page) -> np.ndarray:
    arr = page.asarray()
    return np.moveaxis(arr, 0, -1) if _keyframe(page).axes == "SYX" else arr


def _open(path: Path):
    import tifffile

    try:
        return tifffile.TiffFile(path)  # reads the headers (IFDs) only, no pixel data
    except Exception as e:
        raise DataError(path, f"not a readable TIFF (truncated or corrupt file): {e}") from e


def _planes_checked(path: Path, tf, max_pixels: int) -> tuple[list, ImageInfo, int, int]:
    """The plane's pages, what the file holds, and its height and width, refused above
    `max_pixels` (from the header, before any pixel is decoded)."""
    check_ome(path, tf)
    pages, info = _tiff_planes(path, tf)
    key = _keyframe(pages[0])
    h, w = int(key.shape[key.axes.index("Y")]), int(key.shape[key.axes.index("X")])
    check_pixels(path, h, w, max_pixels, "TIFF header")
    return pages, info, h, w


def tiff_shape(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of the plane `open_tiff` reads, from the header alone."""
    with _open(path) as tf:
        try:
            return _planes_checked(path, tf, max_pixels)[2:]
        except DataError:
            raise
        except Exception as e:
            raise DataError(path, f"cannot read TIFF (truncated or corrupt file): {e}") from e


def open_tiff(path: Path, region_threshold_px: int, max_pixels: int = MAX_PIXELS) -> ImageSource:
    tf = _open(path)
    try:
        pages, info, h, w = _planes_checked(path, tf, max_pixels)
        for note in info.notes:
            log.info("%s: %s", path, note)
        if h * w > region_threshold_px:
            planes = [TiffRegionSource(path, tf, p, info) for p in pages]
            return planes[0] if len(planes) == 1 else StackedSource(planes, info)
        arrays = [_plane_array(p) for p in pages]
        arr = arrays[0] if len(arrays) == 1 else np.stack([a.reshape(a.shape[:2]) for a in arrays], axis=-1)
        tf.close()
        return ArraySource(arr, path, info)
    except DataError:
        tf.close()
        raise
    except Exception as e:
        tf.close()
        raise DataError(path, f"cannot read TIFF (truncated or corrupt file): {e}") from e
