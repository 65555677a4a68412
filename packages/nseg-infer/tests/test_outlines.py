"""The nuclei's outlines, traced for a whole block at once, are exactly the rings skimage's
`find_contours` gives each nucleus's own mask (what the GeoJSON and ROI files held before)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import find_contours

from nseg_infer.sinks.measure import region_table
from nseg_infer.sinks.outlines import block_outlines


def reference_ring(mask: np.ndarray, offset: tuple[int, int]) -> list[list[float]] | None:
    """One mask's ring by find_contours: the longest contour, turning vertices, closed, [x, y] in
    QuPath pixel coordinates, counter-clockwise in the (x, y) plane."""
    contours = find_contours(np.pad(mask.astype(np.float32), 1), 0.5)
    if not contours:
        return None
    ring = max(contours, key=len)
    pts = ring[:-1]
    if len(pts) >= 4:
        d = np.diff(pts, axis=0, append=pts[:1])
        prev = np.concatenate([d[-1:], d[:-1]])
        kept = pts[np.abs(prev[:, 0] * d[:, 1] - prev[:, 1] * d[:, 0]) > 1e-9]
        if len(kept) >= 3:
            ring = np.vstack([kept, kept[:1]])
    xy = np.round(ring[:, ::-1] + (offset[1] - 0.5, offset[0] - 0.5), 2)
    if len(xy) < 4:
        return None
    xs, ys = xy.T
    return (xy if np.sum(xs[:-1] * ys[1:] - xs[1:] * ys[:-1]) >= 0 else xy[::-1]).tolist()


def reference(lab: np.ndarray, wanted: list[int], offset: tuple[int, int]) -> dict[int, list]:
    t = region_table(lab)
    out = {}
    for label in wanted:
        y0, x0, _, _ = t.bbox[label - 1].tolist()
        ring = reference_ring(lab[t.slices(label - 1)] == label, (y0 + offset[0], x0 + offset[1]))
        if ring is not None:
            out[label] = ring
    return out


@pytest.mark.parametrize("seed", range(40))
def test_random_labels_match_find_contours(seed):
    # Dense random labels: saddles, holes, labels in several pieces, labels touching the edge.
    rng = np.random.default_rng(seed)
    h, w = rng.integers(2, 30, 2)
    lab = ((rng.random((h, w)) < rng.uniform(0.2, 0.9)) * rng.integers(1, 6, (h, w))).astype(np.int32)
    present = sorted(set(np.unique(lab).tolist()) - {0})
    wanted = present[::2] if seed % 2 else present  # labels left out are background to the others
    offset = (int(rng.integers(0, 100)), int(rng.integers(0, 100)))
    assert block_outlines(lab, np.asarray(wanted, np.int64), offset) == reference(lab, wanted, offset)


def test_blobs_match_find_contours():
    rng = np.random.default_rng(7)
    lab, n = ndi.label(ndi.gaussian_filter(rng.random((300, 300)), 3) > 0.5)
    assert n > 20
    wanted = list(range(1, n + 1))
    got = block_outlines(lab, np.asarray(wanted), (11, 3))
    assert len(got) == n
    assert got == reference(lab, wanted, (11, 3))


def test_saddle_pixels_are_two_contours_the_first_longest_kept():
    lab = np.zeros((5, 6), np.int32)
    lab[1, 1] = lab[2, 2] = 1         # diagonal neighbours: two one-pixel diamonds
    lab[1:3, 4:6] = 2
    got = block_outlines(lab, np.array([1, 2]))
    assert got[1] == [[1.5, 2.0], [1.0, 1.5], [1.5, 1.0], [2.0, 1.5], [1.5, 2.0]]  # the top-left pixel
    assert got == reference(lab, [1, 2], (0, 0))


def test_empty():
    assert block_outlines(np.zeros((4, 4), np.int32), np.array([], np.int64)) == {}
