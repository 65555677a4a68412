"""ImageJ/Fiji ROI sets (`NAME.rois.zip`): one polygon ROI per nucleus, named by its label.

Encoded by the `roifile` library; written into the zip as nuclei come (a huge image never holds
all its polygons), the layout `roifile.roiwrite` and Fiji's ROI Manager use: one `LABEL.roi`
entry per ROI. Coordinates are the GeoJSON ring's, which share ImageJ's convention (pixel (r, c)
covers [c, c+1) x [r, r+1)), so the outlines land on the same pixels in Fiji and QuPath.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


class RoiZipWriter:
    def __init__(self, path: Path) -> None:
        self.zf = zipfile.ZipFile(path, "w")
        self.count = 0

    def add(self, label: int, ring: list[list[float]]) -> None:
        from roifile import ROI_TYPE, ImagejRoi

        pts = np.asarray(ring[:-1] if ring[0] == ring[-1] else ring, np.float32)
        roi = ImagejRoi.frompoints(pts, name=str(label))
        roi.roitype = ROI_TYPE.POLYGON  # frompoints makes freehand ROIs; an outline is a polygon
        with self.zf.open(f"{label}.roi", "w") as fh:
            fh.write(roi.tobytes())
        self.count += 1

    def close(self) -> None:
        self.zf.close()

    def __enter__(self) -> RoiZipWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
