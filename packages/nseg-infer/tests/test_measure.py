from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse
from skimage.measure import regionprops

from nseg_infer.sinks.measure import COLUMNS, measure, region_table


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


def test_region_table_with_empty_bands_and_no_labels():
    labels = np.zeros((30, 12), np.uint32)
    labels[10:13, 2:5] = 3
    labels[25:27, 1:11] = 70000  # a large label value, bands of background between
    t = region_table(labels, band=4)
    assert list(t.present) == [2, 69999] and list(t.area[t.present]) == [9, 20]
    assert list(t.solidity[t.present]) == [1.0, 1.0] and list(t.perimeter[t.present]) == [8.0, 20.0]  # regionprops
    empty = region_table(np.zeros((9, 9), np.int32), band=4)
    assert len(empty.area) == 0 and len(empty.present) == 0


def _pixel_square_hull(mask: np.ndarray) -> float:
    """Area of the convex hull of a mask's pixel squares, by scipy's Qhull (0 if degenerate)."""
    from scipy.spatial import ConvexHull

    ys, xs = np.nonzero(mask)
    corners = np.concatenate([np.stack([ys + dy, xs + dx], axis=1) for dy in (0, 1) for dx in (0, 1)])
    return float(ConvexHull(corners).volume)


@pytest.mark.parametrize("index", range(7))
def test_region_table_of_one_shape_matches_regionprops(index):
    mask = _shapes()[index]
    (r,) = regionprops(mask.astype(np.uint8))
    t = region_table(mask.astype(np.int32))
    assert tuple(t.centroid[0]) == pytest.approx(r.centroid, abs=1e-9)
    assert t.eccentricity[0] == pytest.approx(r.eccentricity, abs=1e-9)
    assert t.perimeter[0] == pytest.approx(r.perimeter, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_region_table_matches_regionprops_on_random_labels(seed):
    """Touching labels, labels in several pieces, gaps in the numbering, labels on the edges, and a
    band height that cuts through objects: every value is regionprops' (solidity: Qhull's hull of
    the pixel squares), whatever the band."""
    from scipy import ndimage as ndi
    from skimage.measure import label as connected

    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.random((150, 170)), 2.5)
    labels = connected(field > np.quantile(field, 0.55)).astype(np.int32)
    labels[(labels % 5 == 2) & (labels > 0)] = 7            # one label in many pieces
    labels[labels % 11 == 4] = 0                            # gaps in the numbering
    labels[40:60, 30:90] = labels.max() + 3                 # a box touching its neighbours
    gray = rng.random(labels.shape).astype(np.float32) * 300
    other = rng.integers(0, 4000, labels.shape).astype(np.uint16)
    for band in (7, 256):
        t = region_table(labels, [gray, other], band=band)
        props = regionprops(labels, intensity_image=gray)
        assert list(t.present + 1) == [r.label for r in props]
        assert not t.area[np.setdiff1d(np.arange(labels.max()), t.present)].any()
        for r in props:
            k = r.label - 1
            assert t.area[k] == r.area and tuple(t.bbox[k]) == r.bbox
            assert tuple(t.centroid[k]) == pytest.approx(r.centroid, abs=1e-9)
            assert t.eccentricity[k] == pytest.approx(r.eccentricity, abs=1e-9)
            assert t.perimeter[k] == pytest.approx(r.perimeter, abs=1e-9)
            assert t.intensity_sum[k, 0] == pytest.approx(float(gray[r.slice][r.image].astype(np.float64).sum()))
            assert t.intensity_sum[k, 1] == float(other[r.slice][r.image].astype(np.int64).sum())
            assert t.solidity[k] == pytest.approx(min(1.0, r.area / _pixel_square_hull(r.image)), abs=1e-12)


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
        # Summed in float64: the exact mean of the float32 grey values, rounded once.
        assert row["mean_intensity"] == round(float(gray[labels == r.label].astype(np.float64).mean()), 4)
        assert (row["bbox_y0"], row["bbox_x0"], row["bbox_y1"], row["bbox_x1"]) == r.bbox


def _place(masks: list[np.ndarray]) -> np.ndarray:
    """One label image holding each mask in its own band, labels 1..n in order."""
    h = max(m.shape[0] for m in masks)
    labels = np.zeros((h + 2, sum(m.shape[1] + 2 for m in masks)), np.int32)
    x = 1
    for i, m in enumerate(masks, start=1):
        labels[1:1 + m.shape[0], x:x + m.shape[1]][m] = i
        x += m.shape[1] + 2
    return labels


def _rectilinear() -> list[tuple[np.ndarray, float]]:
    """Shapes whose convex hull is their bounding box, with their solidity worked out by hand."""
    rect = np.ones((5, 8), bool)                      # 40 / 40
    ring = np.ones((9, 9), bool)
    ring[3:6, 3:6] = False                            # (81 - 9) / 81
    c_shape = np.ones((20, 20), bool)
    c_shape[5:15, 7:] = False                         # (400 - 130) / 400
    h_shape = np.zeros((10, 9), bool)
    h_shape[:, :2] = h_shape[:, -2:] = h_shape[4:6, :] = True   # (20 + 20 + 10) / 90
    return [(rect, 1.0), (ring, 72 / 81), (c_shape, 270 / 400), (h_shape, 50 / 90)]


def test_solidity_of_rectilinear_shapes_is_exact_and_matches_regionprops():
    masks, want = zip(*_rectilinear(), strict=True)
    labels = _place(list(masks))
    rows = measure(labels, np.zeros((*labels.shape, 3), np.uint8))
    props = regionprops(labels)
    assert [r["solidity"] for r in rows] == [round(w, 5) for w in want]
    # Here the hull of the pixel squares and skimage's rasterised hull are the same rectangle.
    assert [r["solidity"] for r in rows] == [round(float(p.solidity), 5) for p in props]


def test_solidity_of_curved_shapes_matches_the_hull_of_the_pixel_squares():
    from skimage.draw import polygon

    triangle = np.zeros((30, 30), bool)
    triangle[polygon([2, 27, 27], [2, 2, 27])] = True
    ell = np.zeros((20, 20), bool)
    ell[2:18, 2:6] = ell[14:18, 2:18] = True
    masks = [*_shapes()[:4], triangle, ell]
    labels = _place(masks)
    rows = measure(labels, np.zeros((*labels.shape, 3), np.uint8))
    for row, m, p in zip(rows, masks, regionprops(labels), strict=True):
        # scipy's Qhull as an independent reference of the same definition (2-D `volume` is the area).
        assert row["solidity"] == pytest.approx(m.sum() / _pixel_square_hull(m), abs=1e-5)
        # skimage counts hull pixels instead of the hull's area: close, and never below ours here.
        assert row["solidity"] <= p.solidity + 1e-9 and row["solidity"] == pytest.approx(p.solidity, abs=0.07)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_gray_intensity_is_the_float32_channel_mean(dtype, channels):
    from nseg_infer.sinks.measure import gray_intensity

    rng = np.random.default_rng(channels)
    a = (rng.random((40, 33, channels)) * (255 if dtype == np.uint8 else 65535)).astype(dtype)
    want = a[..., :min(channels, 3)].astype(np.float32).mean(axis=2)
    got = gray_intensity(a)
    assert got.dtype == np.float32
    assert np.array_equal(got, want)
