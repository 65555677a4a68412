"""The overlay drawn band by band on its downsampled view is the one skimage's boundaries and a
full-resolution display image would give."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label as connected
from skimage.segmentation import find_boundaries

from nseg_infer.regions import ArraySource, Window
from nseg_infer.sinks import overlay
from nseg_infer.sinks.overlay import draw_overlay


def _labels(seed: int, shape=(90, 110)) -> np.ndarray:
    field = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), 2)
    return connected(field > np.quantile(field, 0.5)).astype(np.uint32)


@pytest.mark.parametrize("seed", range(3))
def test_boundaries_are_find_boundaries_inner(seed):
    lab = _labels(seed)
    want = find_boundaries(lab, mode="inner")
    assert np.array_equal(overlay.boundaries(np.pad(lab, 1, mode="edge")), want)
    # A window with a frame of real context gives the whole image's boundaries there.
    win = (slice(20, 61), slice(35, 90))
    assert np.array_equal(overlay.boundaries(lab[19:62, 34:91]), want[win])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_display_lookup_equals_the_float_arithmetic(dtype):
    a = np.random.default_rng(1).integers(0, np.iinfo(dtype).max, (40, 50, 3), endpoint=True).astype(dtype)
    lo, hi = float(a.min()) + 7.3, float(a.max()) * 0.8
    assert np.array_equal(overlay.display_rgb(a, lo, hi), overlay.display_rgb(a.astype(np.float32), lo, hi))


@pytest.mark.parametrize("factor", [1, 3])
def test_overlay_bands_do_not_change_the_overlay(factor):
    lab = _labels(5, (150, 130))
    img = np.random.default_rng(2).integers(0, 255, (*lab.shape, 3), dtype=np.uint8)
    src = ArraySource(img)
    shape = (-(-150 // factor), -(-130 // factor), 3)
    whole, banded = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    core = Window(0, 150, 0, 130)
    draw_overlay(whole, lab, src, core, factor, (10.0, 240.0), band=1000)
    draw_overlay(banded, lab, src, core, factor, (10.0, 240.0), band=2 * factor)
    assert np.array_equal(whole, banded)
    # Every contour pixel lands in its overlay cell.
    ys, xs = np.nonzero(find_boundaries(lab, mode="inner"))
    assert (whole[ys // factor, xs // factor] == overlay.CONTOUR_RGB).all()
