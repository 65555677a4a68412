"""QuPath-importable GeoJSON: nucleus polygons as detections (the FeatureCollection itself:
`shapes.GeoJsonSink`).

QuPath keeps an object's `id` only when it is a UUID, so each feature's id is a UUID derived from
the image name and the label (uuid5): a rerun gives the same ids, two images never share one.
Every numeric CSV column is a QuPath measurement; the label is kept in `properties.label`.
"""

from __future__ import annotations

import uuid

CLASSIFICATION = {"name": "Nucleus", "color": [255, 200, 0]}
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "nseg:nucleus")


def feature_id(image: str, label: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{image}/{label}"))


def feature(label: int, ring: list[list[float]], measurements: dict | None = None, *, image: str = "") -> dict:
    """One detection; `measurements` keeps only numbers (QuPath's measurement values)."""
    props: dict = {"objectType": "detection", "name": f"Nucleus {label}", "label": label,
                   "classification": CLASSIFICATION}
    if measurements:
        props["measurements"] = {k: v for k, v in measurements.items()
                                 if isinstance(v, int | float) and not isinstance(v, bool)}
    return {"type": "Feature", "id": feature_id(image, label),
            "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}
