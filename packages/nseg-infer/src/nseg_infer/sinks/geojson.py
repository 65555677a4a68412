"""QuPath-importable GeoJSON: nucleus polygons as detections (the FeatureCollection itself:
`shapes.GeoJsonSink`).

QuPath keeps an object's `id` only when it is a UUID, so each feature's id is a UUID derived from
the image name and the label (uuid5): a rerun gives the same ids, two images never share one.
Every numeric CSV column is a QuPath measurement; the label is kept in `properties.label`.
"""

from __future__ import annotations

import uuid

import numpy as np
from skimage.measure import find_contours

CLASSIFICATION = {"name": "Nucleus", "color": [255, 200, 0]}
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "nseg:nucleus")


def feature_id(image: str, label: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{image}/{label}"))


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Keep only the vertices where a closed contour turns (vectorised; the polygon is unchanged)."""
    pts = ring[:-1] if len(ring) > 1 and np.array_equal(ring[0], ring[-1]) else ring
    if len(pts) < 4:
        return ring
    d = np.diff(pts, axis=0, append=pts[:1])  # d[i] = pts[i + 1] - pts[i], cyclically
    prev, nxt = np.concatenate([d[-1:], d[:-1]]), d
    turn = np.abs(prev[:, 0] * nxt[:, 1] - prev[:, 1] * nxt[:, 0]) > 1e-9
    kept = pts[turn]
    return np.vstack([kept, kept[:1]]) if len(kept) >= 3 else ring


def mask_polygon(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[list[float]] | None:
    """Outer ring of a binary mask as closed [x, y] points in QuPath pixel coordinates (pixel
    (r, c) covers [c, c+1) x [r, r+1)), counter-clockwise as GeoJSON wants; None if degenerate."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.float32)  # np.pad costs more per nucleus
    padded[1:-1, 1:-1] = mask
    contours = find_contours(padded, 0.5)
    if not contours:
        return None
    ring = _drop_collinear(max(contours, key=len))
    oy, ox = offset
    # Contour points of a 0/1 mask lie on half-pixels, so the shift is exact (as a per-point round).
    xy = np.round(ring[:, ::-1] + (ox - 0.5, oy - 0.5), 2)
    if not np.array_equal(xy[0], xy[-1]):
        xy = np.vstack([xy, xy[:1]])
    if len(xy) < 4:
        return None
    xs, ys = xy.T
    signed = float(np.sum(xs[:-1] * ys[1:] - xs[1:] * ys[:-1]))
    # RFC 7946 orientation is judged in the coordinate plane (not on screen, where y points down).
    return (xy if signed >= 0 else xy[::-1]).tolist()


def feature(label: int, ring: list[list[float]], measurements: dict | None = None, *, image: str = "") -> dict:
    """One detection; `measurements` keeps only numbers (QuPath's measurement values)."""
    props: dict = {"objectType": "detection", "name": f"Nucleus {label}", "label": label,
                   "classification": CLASSIFICATION}
    if measurements:
        props["measurements"] = {k: v for k, v in measurements.items()
                                 if isinstance(v, int | float) and not isinstance(v, bool)}
    return {"type": "Feature", "id": feature_id(image, label),
            "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}
