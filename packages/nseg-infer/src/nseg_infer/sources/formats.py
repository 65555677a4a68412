"""What a file is before it is decoded: the image suffixes nseg reads, the reading limits, and
the pixel count a file's header claims (PNG IHDR, JPEG frame header, TIFF IFD, CZI/ND2 metadata),
checked against `--max-pixels` before any pixel buffer exists. Every failure is a `DataError`
naming the file.
"""

from __future__ import annotations

from pathlib import Path

from nseg_data.errors import DataError

PNG = (".png",)
JPEG = (".jpg", ".jpeg")
TIFF = (".tif", ".tiff")
VENDOR = (".czi", ".nd2")  # read through bioio: `pip install 'nseg-infer[formats]'`
SUPPORTED = PNG + JPEG + TIFF + VENDOR
# The one size above which an image is handled in regions: a TIFF is read window by window instead
# of into memory (`FileConfig.region_px`), its labels live on disk and are written as a tiled
# BigTIFF (`FileConfig.large_px`), a cluster splits it into block tasks (`ClusterOptions.split_px`).
LARGE_IMAGE_PX = 8192 * 8192
# An image whose header claims more pixels than this is refused before anything is allocated
# (`--max-pixels`, `RunConfig.max_pixels`): a 65,536 x 65,536 scan passes, a few bytes claiming
# 10^6 x 10^6 do not.
MAX_PIXELS = 1 << 32
def image_suffix(path: Path) -> str:
    return path.suffix.lower()


def check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_file():
        raise DataError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    if image_suffix(path) not in SUPPORTED:
        raise DataError(path, f"unsupported format '{path.suffix}' (supported: {', '.join(SUPPORTED)})")


def check_pixels(path: Path, height: int, width: int, max_pixels: int, what: str = "header") -> None:
    """Refuse an image of absurd size (or a non-positive one) before any pixel buffer exists."""
    if height < 1 or width < 1:
        raise DataError(path, f"{what} claims an image of {height} x {width} pixels (corrupt file)")
    if height * width > max_pixels:
        raise DataError(path, f"{what} claims {height} x {width} = {height * width:,} pixels, above the limit of "
                              f"{max_pixels:,} (--max-pixels); refused before decoding")


def png_size(path: Path) -> tuple[int, int]:
    """(height, width) from the IHDR chunk: the first 24 bytes of every PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise DataError(path, "not a PNG file (no PNG signature and IHDR header)")
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8, CC are not frames.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(path: Path) -> tuple[int, int]:
    """(height, width) from the first start-of-frame segment, walking the marker segments."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            raise DataError(path, "not a JPEG file (no start-of-image marker)")
        while True:
            b = f.read(1)
            while b == b"\xff":  # fill bytes before a marker
                b = f.read(1)
            if not b:
                raise DataError(path, "JPEG has no frame header (truncated or corrupt file)")
            marker = b[0]
            if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
                continue
            seg = f.read(2)
            if len(seg) < 2:
                raise DataError(path, "JPEG header is cut short (truncated or corrupt file)")
            length = int.from_bytes(seg, "big")
            if marker in _SOF:
                body = f.read(5)
                if len(body) < 5:
                    raise DataError(path, "JPEG frame header is cut short (truncated or corrupt file)")
                return int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
            if length < 2:
                raise DataError(path, f"JPEG segment 0x{marker:02X} has an invalid length {length}")
            f.seek(length - 2, 1)
