"""The nuclei a block of an image owns, measured: CSV rows and outlines, in label order.

A nucleus belongs to the block whose core holds its bounding box's top-left corner; the block's
labels are read over its outer window (core plus margin), so a nucleus is seen whole unless it is
larger than the margin (counted in `Nuclei.cut`, `tiling.cut_by_margin`). The CSV, GeoJSON and
ROI sinks all format these rows and outlines; the measurement itself is `measure.region_table`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nseg_infer.engine.tiling import block_grid, cut_by_margin
from nseg_infer.regions import ImageSource, Window
from nseg_infer.sinks import measure
from nseg_infer.sinks.outlines import block_outlines


@dataclass(frozen=True)
class MeasureOptions:
    """What goes into a row besides pixel measurements: the image name (CSV `image`, GeoJSON
    ids), µm columns when the pixel size is known, and per-channel means when `channels` (every
    channel of a multichannel input) is given."""

    image: str = ""
    pixel_size_um: tuple[float, float] | None = None
    channels: ImageSource | None = None

    def __post_init__(self) -> None:
        if self.pixel_size_um is not None and (len(self.pixel_size_um) != 2 or min(self.pixel_size_um) <= 0):
            raise ValueError(f"pixel_size_um must be (y, x) > 0, got {self.pixel_size_um}")

    def columns(self, with_score: bool) -> tuple[str, ...]:
        return measure.columns(with_score, calibrated=self.pixel_size_um is not None,
                               n_channels=self.channels.channels if self.channels is not None else 0)


@dataclass(frozen=True)
class Nuclei:
    """The nuclei one block owns: a CSV row each (with its global `label`), the outlines of those
    whose mask has one (label, closed [x, y] ring; only when asked for), and how many of them may
    be cut by the block's margin."""

    rows: list[dict]
    rings: list[tuple[int, list[list[float]]]]
    cut: int


def _compact(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels present incl. 0, labels renumbered 0..k); a lookup table is O(pixels), far cheaper
    than np.unique's argsort on big blocks."""
    top = int(lab.max())
    if top > 64 * lab.size:
        uniq, inv = np.unique(lab, return_inverse=True)
        if uniq[0] != 0:
            return np.concatenate([[0], uniq]), inv.reshape(lab.shape).astype(np.int32) + 1
        return uniq, inv.reshape(lab.shape).astype(np.int32)
    present = np.zeros(top + 1, bool)
    present[lab] = True
    present[0] = True
    uniq = np.flatnonzero(present)
    lut = np.zeros(top + 1, np.int32)
    lut[uniq] = np.arange(len(uniq), dtype=np.int32)
    return uniq, lut[lab]


def measure_block(lab: np.ndarray, src: ImageSource, outer: Window, core: Window, scores: np.ndarray | None,
                  opts: MeasureOptions = MeasureOptions(), *, polygons: bool = True) -> Nuclei:
    """The nuclei whose bounding box starts in `core`, from `lab`, the labels of `outer` (global
    ids), and the pixels of `src` (and `opts.channels`) there; `scores[label - 1]` is a label's
    score (Mask R-CNN). Outlines only when `polygons`."""
    if not lab.any():
        return Nuclei([], [], 0)
    intensities = [measure.gray_intensity(src.read(outer))]
    if opts.channels is not None:
        chan = opts.channels.read(outer)
        intensities += [chan[..., c] for c in range(chan.shape[2])]
    # Compact the labels present so the per-label table stays block-sized, not image-sized.
    uniq, compact = _compact(lab)
    table = measure.region_table(compact, intensities)
    rows, owned, cut = [], [], 0
    for k in table.present.tolist():
        y0, x0, y1, x1 = table.bbox[k].tolist()
        if not core.contains(y0 + outer.y0, x0 + outer.x0):
            continue
        cut += cut_by_margin(Window(y0, y1, x0, x1), outer, src.shape)
        row = measure.row(table, k, (outer.y0, outer.x0), image=opts.image)
        label = int(uniq[k + 1])
        row["label"] = label
        if scores is not None:
            ok = 0 < label <= len(scores) and np.isfinite(scores[label - 1])
            row[measure.SCORE_COLUMN] = round(float(scores[label - 1]), 5) if ok else ""
        if opts.pixel_size_um is not None:
            measure.add_um(row, opts.pixel_size_um)
        if opts.channels is not None:
            measure.add_channel_means(row, table, k)
        rows.append(row)
        owned.append(k + 1)
    rings = []
    if polygons:
        # Every owned nucleus traced at once (`outlines`), listed in label order as the rows are.
        traced = block_outlines(compact, np.asarray(owned, np.int64), (outer.y0, outer.x0))
        rings = [(int(uniq[c]), traced[c]) for c in owned if c in traced]
    return Nuclei(rows, rings, cut)


def measure_all(labels: np.ndarray, src: ImageSource, *, scores: np.ndarray | None = None,
                opts: MeasureOptions = MeasureOptions(), block: int = 2048, margin: int = 128) -> list[dict]:
    """Every row of a label image, as the CSV sink writes them (the Python API's table)."""
    h, w = src.shape
    out: list[dict] = []
    for b in block_grid(h, w, block, margin):
        lab = np.asarray(labels[b.outer.slices])
        out.extend(measure_block(lab, src, b.outer, b.core, scores, opts, polygons=False).rows)
    return out
