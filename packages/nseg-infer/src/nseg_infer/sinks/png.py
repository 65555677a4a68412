"""A small RGB PNG encoder for the overlay: every row with PNG's Sub filter, computed with numpy,
then zlib at level 2, band by band.

Pillow's encoder tries every filter on every row before compressing; Sub alone compresses these
images (the raw image under thin contours) to the same size at about half the time, and zlib
releases the GIL while it works, so the model's threads keep running beside it. Level 2 takes
0.65x the time of level 3 for 12-18 % more bytes (a 2048 x 2048 overlay: 0.085 s against 0.130 s
on an AMD EPYC with AVX-512 BF16, no AMX; level 1 is no faster and larger still): the overlay is a quick look, and on 2
cores every encoder's second is one the model does not get.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUB = 1  # PNG filter type: each byte minus the byte one pixel to its left


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_rgb_png(fh: BinaryIO, rgb: np.ndarray, *, level: int = 2, band: int = 256) -> None:
    """Write `rgb` (HxWx3 uint8) to `fh` as an 8-bit RGB PNG; `band` rows are filtered at a time
    and their compressed bytes written as an IDAT chunk of their own (PNG joins consecutive IDAT
    chunks), so neither a second image nor the whole compressed stream is ever held."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8, got {rgb.shape} {rgb.dtype}")
    h, w, _ = rgb.shape
    fh.write(SIGNATURE)
    fh.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
    z = zlib.compressobj(level)
    for y0 in range(0, h, band):
        flat = rgb[y0:y0 + band].reshape(-1, w * 3)
        rows = np.empty((flat.shape[0], 1 + w * 3), np.uint8)
        rows[:, 0] = SUB
        rows[:, 1:4] = flat[:, :3]
        np.subtract(flat[:, 3:], flat[:, :-3], out=rows[:, 4:])  # uint8 wraps modulo 256, as PNG's
        data = z.compress(rows)
        if data:
            fh.write(_chunk(b"IDAT", data))
    fh.write(_chunk(b"IDAT", z.flush()))
    fh.write(_chunk(b"IEND", b""))
