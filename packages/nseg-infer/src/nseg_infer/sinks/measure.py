"""Per-nucleus measurements (one CSV row per label), all labels of a block at once.

`region_table` takes every measurement of a label image in a few whole-array passes
(`ndimage.find_objects` for the boxes, `np.bincount` for areas, moments and intensity sums, the
border-pixel code of skimage's `perimeter` for perimeters, row runs for convex hulls), band by
band so temporaries stay small: the values are regionprops' (solidity: the hull of the pixel
squares), at a fraction of its per-region cost, which dominated writing the products.

Pixel columns always; with a known pixel size, the same in µm (`UM_COLUMNS`: the pixel columns
times the pixel size; perimeter times the geometric mean of the y and x sizes); for an input with
several channels, the mean raw intensity of every channel (`mean_intensity_ch0`, ...). The `image`
column names the input so tables of many images concatenate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

COLUMNS = ("image", "label", "centroid_y", "centroid_x", "area", "perimeter", "eccentricity", "solidity",
           "mean_intensity", "integrated_intensity", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")
SCORE_COLUMN = "score"
UM_COLUMNS = ("area_um2", "perimeter_um", "centroid_y_um", "centroid_x_um")


def channel_columns(n_channels: int) -> tuple[str, ...]:
    return tuple(f"mean_intensity_ch{c}" for c in range(n_channels))


def columns(with_score: bool, *, calibrated: bool = False, n_channels: int = 0) -> tuple[str, ...]:
    return ((*COLUMNS, *((SCORE_COLUMN,) if with_score else ()), *(UM_COLUMNS if calibrated else ()),
             *channel_columns(n_channels)))


def add_um(row: dict, pixel_size_um: tuple[float, float]) -> dict:
    py, px = pixel_size_um
    row["area_um2"] = round(row["area"] * py * px, 4)
    row["perimeter_um"] = round(row["perimeter"] * float(np.sqrt(py * px)), 4)
    row["centroid_y_um"] = round(row["centroid_y"] * py, 4)
    row["centroid_x_um"] = round(row["centroid_x"] * px, 4)
    return row


def gray_intensity(raw: np.ndarray) -> np.ndarray:
    """Raw intensity (original units, not normalised) as the channel mean, so 16-bit data keeps
    its physical scale in the table."""
    a = np.asarray(raw)
    if a.ndim == 3:
        n = min(a.shape[2], 3)
        if a.dtype in (np.uint8, np.uint16):
            # The float32 mean of n integers, without an n-channel float32 copy: their sum is exact
            # in float32 (below 2^24), divided by n as mean() divides it, so the values are equal.
            total = a[..., 0].astype(np.float32)
            for c in range(1, n):
                total += a[..., c]
            return total / np.float32(n) if n > 1 else total
        return a[..., :n].astype(np.float32).mean(axis=2)
    return a.astype(np.float32)


# skimage.measure.perimeter's weight of a border pixel by its code: 1 + 2 x (4-neighbours on the
# same label's border) + 10 x (diagonal neighbours on it); only odd codes (border pixels) count.
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2
_NEIGHBOURS = ((-1, 0, 2), (1, 0, 2), (0, -1, 2), (0, 1, 2), (-1, -1, 10), (-1, 1, 10), (1, -1, 10), (1, 1, 10))


@dataclass(frozen=True)
class RegionTable:
    """Measurements of labels 1..n of a label image: index k is label k + 1, and a label that does
    not occur has area 0. Coordinates are the label image's."""

    bbox: np.ndarray            # (n, 4) int64: y0, x0, y1, x1 (end exclusive)
    area: np.ndarray            # (n,) int64
    centroid: np.ndarray        # (n, 2) float64: y, x
    eccentricity: np.ndarray    # of the ellipse with the same second central moments
    perimeter: np.ndarray       # skimage's estimate (4-connected border, weighted by neighbours)
    solidity: np.ndarray        # area over the area of the convex hull of the pixel squares
    intensity_sum: np.ndarray   # (n, len(intensities)) float64

    @property
    def present(self) -> np.ndarray:
        """Indices k of the labels k + 1 that occur, in label order."""
        return np.flatnonzero(self.area)

    def slices(self, k: int) -> tuple[slice, slice]:
        y0, x0, y1, x1 = (int(v) for v in self.bbox[k])
        return slice(y0, y1), slice(x0, x1)


def region_table(labels: np.ndarray, intensities: Sequence[np.ndarray] = (), *, band: int = 256) -> RegionTable:
    """Every label's measurements, with the sum of each HxW image of `intensities` over it. Works
    through `band` rows at a time, so temporaries stay a few band-sized arrays."""
    lab = np.asarray(labels)
    h, w = lab.shape
    n = int(lab.max(initial=0))
    bbox = np.zeros((n, 4), np.int64)
    for k, sl in enumerate(ndi.find_objects(lab, max_label=n)):
        if sl is not None:
            bbox[k] = sl[0].start, sl[1].start, sl[0].stop, sl[1].stop
    origin = np.vstack([[0, 0], bbox[:, :2]])
    sums = np.zeros((6, n + 1))  # count, y, x, yy, yx, xx; y, x from the box's corner, so sums stay exact
    isum = np.zeros((n + 1, len(intensities)))
    perimeter = np.zeros(n + 1)
    runs = []
    for y0 in range(0, h, band):
        y1 = min(y0 + band, h)
        flat = lab[y0:y1].ravel()
        idx = np.flatnonzero(flat)
        lb = flat[idx].astype(np.intp)
        ys, xs = np.divmod(idx, w)
        ys += y0
        dy, dx = ys - origin[lb, 0], xs - origin[lb, 1]
        for i, v in enumerate((None, dy, dx, dy * dy, dy * dx, dx * dx)):
            sums[i] += np.bincount(lb, weights=v, minlength=n + 1)
        for c, img in enumerate(intensities):
            isum[:, c] += np.bincount(lb, weights=np.asarray(img[y0:y1]).ravel()[idx], minlength=n + 1)
        runs.append(_row_runs(idx, lb, ys, xs))
        perimeter += _band_perimeter(lab, y0, y1, n)
    count, sy, sx, syy, syx, sxx = sums[:, 1:]
    area = count.astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        my, mx = sy / count, sx / count
        a, b, c = syy / count - my * my, syx / count - my * mx, sxx / count - mx * mx
        half, root = (a + c) / 2, np.hypot((a - c) / 2, b)
        l1, l2 = half + root, np.maximum(half - root, 0.0)
        ecc = np.where(l1 > 0, np.sqrt(1 - l2 / l1), 0.0)
        hull = _hull_areas(*(np.concatenate(r) for r in zip(*runs, strict=True)), n)
        solidity = np.where(hull > 0, np.minimum(1.0, area / hull), 1.0)
    centroid = np.stack([bbox[:, 0] + my, bbox[:, 1] + mx], axis=1)
    return RegionTable(bbox, area, centroid, np.nan_to_num(ecc), perimeter[1:], solidity, isum[1:])


def _row_runs(idx: np.ndarray, lb: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, ...]:
    """(label, row, first x, last x + 1) of every horizontal run of one label, from the foreground
    pixels (flat indices `idx`, row-major) of a band."""
    if not len(idx):
        return lb, ys, xs, xs
    new = np.ones(len(idx), bool)
    new[1:] = (np.diff(idx) != 1) | (lb[1:] != lb[:-1]) | (xs[1:] == 0)
    starts = np.flatnonzero(new)
    stops = np.append(starts[1:], len(idx)) - 1
    return lb[starts], ys[starts], xs[starts], xs[stops] + 1


def _band_perimeter(lab: np.ndarray, y0: int, y1: int, n: int) -> np.ndarray:
    """Per-label perimeter of rows y0..y1 as skimage's `perimeter` of each region's own mask: a
    border pixel has a 4-neighbour of another label (or outside), and its weight depends on which
    of its 8 neighbours are border pixels of the same label. Needs two rows beyond the band."""
    h, w = lab.shape
    e0 = max(y0 - 2, 0)
    p = np.pad(np.asarray(lab[e0:min(y1 + 2, h)]), 1)  # 0 outside: not a label
    c = p[1:-1, 1:-1]
    inner = (c == p[:-2, 1:-1]) & (c == p[2:, 1:-1]) & (c == p[1:-1, :-2]) & (c == p[1:-1, 2:])
    b = np.pad((c != 0) & ~inner, 1)  # rows of b are rows of p
    r0, r1 = y0 - e0 + 1, y1 - e0 + 1
    centre = p[r0:r1, 1:-1]
    code = np.ones(centre.shape, np.uint8)
    for dy, dx, weight in _NEIGHBOURS:
        same = b[r0 + dy:r1 + dy, 1 + dx:w + 1 + dx] & (p[r0 + dy:r1 + dy, 1 + dx:w + 1 + dx] == centre)
        code += same.view(np.uint8) * np.uint8(weight)
    on = b[r0:r1, 1:-1]
    return np.bincount(centre[on].astype(np.intp), weights=_PERIMETER_WEIGHTS[code[on]], minlength=n + 1)


def _hull_areas(lb: np.ndarray, ys: np.ndarray, left: np.ndarray, right: np.ndarray, n: int) -> np.ndarray:
    """Area of the convex hull of each label's pixel squares, from its row runs. Only a row's
    outermost corners can be hull vertices: at each corner level (a row's top and bottom edge)
    the leftmost and the rightmost x. The hull is the region between the lower convex envelope of
    the left points and the upper concave one of the right points (both end at the extreme
    levels, which hold both a left and a right point)."""
    if not len(lb):
        return np.zeros(n)
    lv, y = np.concatenate([lb, lb]), np.concatenate([ys, ys + 1])
    xl, xr = np.concatenate([left, left]), np.concatenate([right, right])
    order = np.lexsort((y, lv))
    lv, y, xl, xr = lv[order], y[order], xl[order], xr[order]
    first = np.flatnonzero(np.append(True, (lv[1:] != lv[:-1]) | (y[1:] != y[:-1])))
    lv, y = lv[first], y[first]
    xl, xr = np.minimum.reduceat(xl, first), np.maximum.reduceat(xr, first)
    return (_majorant_integral(lv, y, xr, n) + _majorant_integral(lv, y, -xl, n))[1:]


def _majorant_integral(g: np.ndarray, y: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Per group g (points sorted by g, then y), the integral over y of the least concave majorant
    of the points (y, v). A vertex on or below the chord of its neighbours is no vertex of the
    majorant, so all such vertices of all groups are dropped together, pass after pass, until the
    chains are strictly concave; integer arithmetic, so the result is exact."""
    while True:
        inner = np.zeros(len(g), bool)
        inner[1:-1] = (g[1:-1] == g[:-2]) & (g[1:-1] == g[2:])
        drop = np.zeros(len(g), bool)
        drop[1:-1] = (v[2:] - v[:-2]) * (y[1:-1] - y[:-2]) >= (v[1:-1] - v[:-2]) * (y[2:] - y[:-2])
        drop &= inner
        if not drop.any():
            break
        g, y, v = g[~drop], y[~drop], v[~drop]
    seg = g[1:] == g[:-1]
    trap = (y[1:] - y[:-1]) * (v[1:] + v[:-1]) / 2
    return np.bincount(g[1:][seg], weights=trap[seg], minlength=n + 1)


def row(t: RegionTable, k: int, offset: tuple[int, int] = (0, 0), *, image: str = "") -> dict:
    """The CSV row of label k + 1 (its `label` is k + 1), the mean intensity from the table's first
    intensity sum; `offset` maps the table's coordinates to the image's."""
    oy, ox = offset
    y0, x0, y1, x1 = (int(v) for v in t.bbox[k])
    area = int(t.area[k])
    mean = float(t.intensity_sum[k, 0]) / area if t.intensity_sum.shape[1] else 0.0
    return {
        "image": image, "label": k + 1, "centroid_y": round(float(t.centroid[k, 0]) + oy, 3),
        "centroid_x": round(float(t.centroid[k, 1]) + ox, 3), "area": area,
        "perimeter": round(float(t.perimeter[k]), 3), "eccentricity": round(float(t.eccentricity[k]), 5),
        "solidity": round(float(t.solidity[k]), 5), "mean_intensity": round(mean, 4),
        "integrated_intensity": round(mean * area, 3),
        "bbox_y0": y0 + oy, "bbox_x0": x0 + ox, "bbox_y1": y1 + oy, "bbox_x1": x1 + ox,
    }


def add_channel_means(row: dict, t: RegionTable, k: int, first: int = 1) -> dict:
    """`mean_intensity_chN` from the table's intensity sums `first`, `first + 1`, ..."""
    sums = t.intensity_sum[k, first:]
    for name, v in zip(channel_columns(len(sums)), sums, strict=True):
        row[name] = round(float(v) / int(t.area[k]), 4)
    return row


def measure(labels: np.ndarray, image: np.ndarray, scores: np.ndarray | None = None, *,
            name: str = "") -> list[dict]:
    """All rows for a whole (in-memory) label image, in label order."""
    t = region_table(labels, [gray_intensity(image)])
    rows = []
    for k in t.present:
        r = row(t, int(k), image=name)
        if scores is not None:
            r[SCORE_COLUMN] = round(float(scores[k]), 5) if k < len(scores) else ""
        rows.append(r)
    return rows
