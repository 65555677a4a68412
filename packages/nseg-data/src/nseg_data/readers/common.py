"""Decoding helpers shared by the readers: every failure names its file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from nseg_data.errors import DataError


def decode_image_bytes(data: bytes, *, source: str) -> np.ndarray:
    """Decode PNG/JPEG/TIFF bytes to an array, raising DataError naming `source` on failure."""
    if not data:
        raise DataError(source, "file is empty (0 bytes)")
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        import tifffile

        try:
            return tifffile.imread(io.BytesIO(data))
        except Exception as exc:  # tifffile raises many types
            raise DataError(source, f"cannot decode TIFF ({exc})") from exc
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode not in ("L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I", "F", "1"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(source, f"cannot decode image ({exc})") from exc


def read_image_file(path: Path) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror or exc})") from exc
    return decode_image_bytes(data, source=str(path))


def mask_to_bool(arr: np.ndarray, *, source: str) -> np.ndarray:
    """A single-nucleus mask image (0/255, any channel layout) to HxW bool."""
    a = np.asarray(arr)
    if a.ndim == 3:
        # Gray+alpha (2 channels) keeps the gray plane: alpha is often 255 everywhere.
        a = a[..., 0] if a.shape[2] in (1, 2, 3) else a[..., :3].max(axis=2)
    if a.ndim != 2:
        raise DataError(source, f"mask must be 2-D, got shape {a.shape}")
    return a > 0


def masks_to_labels(masks: list[np.ndarray], shape: tuple[int, int], *, source: str) -> tuple[np.ndarray, int]:
    """Stack binary masks into an HxW uint32 label image.

    Returns (labels, overlap_pixels). Where masks overlap the later mask wins; the overlap count
    is returned so that QC can report it instead of it vanishing silently.
    """
    labels = np.zeros(shape, dtype=np.uint32)
    overlap = 0
    for i, m in enumerate(masks, start=1):
        if m.shape != shape:
            raise DataError(source, f"mask {i} has shape {m.shape}, image has {shape}")
        overlap += int(np.count_nonzero(labels[m]))
        labels[m] = i
    return labels, overlap
