"""Nucleus outlines: QuPath GeoJSON (`NAME.geojson`, `NAME.geojson.gz`) and ImageJ ROI sets
(`NAME.rois.zip`), in label order.

As the CSV's rows, a block's outlines are rendered on their own (`part`): GeoJSON features as
the text between the file's head and tail, ROIs as an uncompressed zip of `LABEL.roi` entries,
so a cluster renders them in parallel and one task concatenates them in block order.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile

from nseg_infer.sinks import geojson, rois
from nseg_infer.sinks.base import LabelledImage, PartSink
from nseg_infer.sinks.nuclei import Nuclei

GEOJSON_HEAD = b'{"type": "FeatureCollection", "features": [\n'
GEOJSON_TAIL = b"\n]}\n"
FEATURE_SEPARATOR = b",\n"


class GeoJsonSink(PartSink):
    """A FeatureCollection of detections, written feature by feature (a huge image never holds all
    its polygons)."""

    product = "geojson"
    part_name = "geojson"
    polygons = True

    def start(self, image: LabelledImage) -> None:
        self.fh = self.enter(self._open_file())
        self.fh.write(GEOJSON_HEAD)
        self.empty = True

    def _open_file(self):
        return open(self.temp(self.path), "wb")

    @staticmethod
    def part(nuclei: Nuclei, image: LabelledImage) -> bytes:
        by_label = {row["label"]: row for row in nuclei.rows}
        feats = (json.dumps(geojson.feature(label, ring, by_label[label], image=image.name), separators=(",", ":"))
                 for label, ring in nuclei.rings)
        return ",\n".join(feats).encode("utf-8")

    def write_part(self, part: bytes) -> None:
        if not part:
            return
        if not self.empty:
            self.fh.write(FEATURE_SEPARATOR)
        self.fh.write(part)
        self.empty = False

    def finish(self) -> None:
        self.fh.write(GEOJSON_TAIL)


class GeoJsonGzSink(GeoJsonSink):
    """The same FeatureCollection, gzipped."""

    product = "geojson.gz"

    def _open_file(self):
        return gzip.open(self.temp(self.path), "wb")


class RoiSink(PartSink):
    """An ImageJ ROI set: one polygon ROI per nucleus, `LABEL.roi`, the layout of Fiji's ROI Manager."""

    product = "rois"
    part_name = "rois"
    polygons = True

    def start(self, image: LabelledImage) -> None:
        self.zf = self.enter(zipfile.ZipFile(self.temp(self.path), "w"))

    @staticmethod
    def part(nuclei: Nuclei, image: LabelledImage) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for label, ring in nuclei.rings:
                zf.writestr(rois.entry_name(label), rois.roi_bytes(label, ring))
        return buf.getvalue()

    def write_part(self, part: bytes) -> None:
        with zipfile.ZipFile(io.BytesIO(part)) as src:
            for info in src.infolist():
                with self.zf.open(info.filename, "w") as fh:
                    fh.write(src.read(info))
