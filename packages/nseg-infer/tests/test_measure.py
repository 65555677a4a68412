from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse
from skimage.measure import regionprops

from nseg_infer.measure import COLUMNS, measure, shape_moments


def _shapes() -> list[np.ndarray]:
    out = []
    for r, c, rot in ((6, 3, 0.0), (9, 4, 0.7), (5, 5, 0.0), (12, 2, -1.2)):
        m = np.zeros((40, 40), bool)
        m[ellipse(20, 20, r, c, rotation=rot)] = True
        out.append(m)
    single = np.zeros((3, 3), bool)
    single[1, 1] = True
    line = np.zeros((1, 7), bool)
    line[0, :] = True
    ring = np.ones((9, 9), bool)
    ring[3:6, 3:6] = False
    return [*out, single, line, ring]


@pytest.mark.parametrize("index", range(7))
def test_shape_moments_match_regionprops(index):
    mask = _shapes()[index]
    (r,) = regionprops(mask.astype(np.uint8))
    cy, cx, ecc = shape_moments(mask)
    assert (cy, cx) == pytest.approx(r.centroid, abs=1e-9)
    assert ecc == pytest.approx(r.eccentricity, abs=1e-9)


def test_measure_rows_match_regionprops():
    rng = np.random.default_rng(3)
    labels = np.zeros((80, 90), np.int32)
    for i, m in enumerate(_shapes()[:4], start=1):
        y, x = rng.integers(0, 40), rng.integers(0, 50)
        labels[y:y + 40, x:x + 40][m & (labels[y:y + 40, x:x + 40] == 0)] = i
    image = rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)
    rows = measure(labels, image)
    gray = image.astype(np.float32).mean(axis=2)
    props = regionprops(labels, intensity_image=gray)
    assert len(rows) == len(props) == len(np.unique(labels)) - 1
    for row, r in zip(rows, props, strict=True):
        assert tuple(row) == COLUMNS and row["label"] == r.label and row["area"] == r.area
        assert (row["centroid_y"], row["centroid_x"]) == pytest.approx(r.centroid, abs=1e-3)
        assert row["eccentricity"] == pytest.approx(r.eccentricity, abs=1e-5)
        assert row["mean_intensity"] == pytest.approx(r.intensity_mean, abs=1e-3)
        assert (row["bbox_y0"], row["bbox_x0"], row["bbox_y1"], row["bbox_x1"]) == r.bbox
