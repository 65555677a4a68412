"""The overlay's PNG encoder: any RGB image decodes (Pillow) to the same pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from nseg_infer.sinks.png import write_rgb_png


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (300, 129)])
def test_round_trip(shape):
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    buf = io.BytesIO()
    write_rgb_png(buf, rgb, band=64)
    im = Image.open(io.BytesIO(buf.getvalue()))
    assert im.mode == "RGB"
    assert np.array_equal(np.asarray(im), rgb)


def test_refuses_other_arrays():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        write_rgb_png(io.BytesIO(), np.zeros((4, 4), np.uint8))
