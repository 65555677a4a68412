"""The measurement table `NAME.csv`: a header, then one row per nucleus, in label order.

A block's rows are rendered on their own (`CsvSink.part`), so a cluster's block tasks render them
in parallel and one short task concatenates the parts in block order: byte for byte the file
that writing the blocks one after another gives.
"""

from __future__ import annotations

import csv
import io

from nseg_infer.sinks.base import LabelledImage, PartSink
from nseg_infer.sinks.nuclei import Nuclei


def _csv_bytes(columns: tuple[str, ...], rows: list[dict], *, header: bool = False) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


class CsvSink(PartSink):
    product = "csv"
    part_name = "csv"

    def start(self, image: LabelledImage) -> None:
        self.fh = self.enter(open(self.temp(self.path), "wb"))  # noqa: SIM115 - closed when the sink closes
        self.fh.write(_csv_bytes(image.columns, [], header=True))

    @staticmethod
    def part(nuclei: Nuclei, image: LabelledImage) -> bytes:
        return _csv_bytes(image.columns, nuclei.rows)

    def write_part(self, part: bytes) -> None:
        self.fh.write(part)
