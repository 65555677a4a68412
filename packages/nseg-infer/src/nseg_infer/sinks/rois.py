"""ImageJ/Fiji ROIs (`NAME.rois.zip`): one polygon ROI per nucleus, named by its label.

Encoded by the `roifile` library, one `LABEL.roi` entry per ROI, the layout `roifile.roiwrite`
and Fiji's ROI Manager use (the zip itself: `shapes.RoiSink`). Coordinates are the GeoJSON ring's,
which share ImageJ's convention (pixel (r, c) covers [c, c+1) x [r, r+1)), so the outlines land
on the same pixels in Fiji and QuPath.
"""

from __future__ import annotations

import numpy as np


def entry_name(label: int) -> str:
    return f"{label}.roi"


def roi_bytes(label: int, ring: list[list[float]]) -> bytes:
    """The ROI of one nucleus outline (a closed [x, y] ring)."""
    from roifile import ROI_TYPE, ImagejRoi

    pts = np.asarray(ring[:-1] if ring[0] == ring[-1] else ring, np.float32)
    roi = ImagejRoi.frompoints(pts, name=str(label))
    roi.roitype = ROI_TYPE.POLYGON  # frompoints makes freehand ROIs; an outline is a polygon
    return roi.tobytes()
