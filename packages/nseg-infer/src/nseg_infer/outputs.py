"""Writing a file's products: labels TIFF, measurement CSV, overlay PNG and GeoJSON.

Everything is written to a temp file beside the target and renamed. Products are computed block
by block over the label canvas (an array, or a disk-backed memmap for huge images), so memory
does not grow with the image; a nucleus is measured by the block holding its bounding box's
top-left corner, with a margin so it is seen whole.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from skimage.measure import regionprops
from skimage.segmentation import find_boundaries

from nseg_infer import geojson, measure, overlay
from nseg_infer.imageio import ImageSource, atomic_path
from nseg_infer.tiling import Window, block_grid

log = logging.getLogger(__name__)

LABEL_TILE = 256


def label_dtype(max_label: int) -> np.dtype:
    return np.dtype(np.uint16) if max_label <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def write_labels(path: Path, labels: np.ndarray, max_label: int, *, tiled: bool) -> Path:
    """uint16 when the labels fit, else uint32, zlib-compressed. `tiled` writes a tiled BigTIFF
    tile by tile from `labels` (typically a memmap), never holding more than one tile row."""
    dtype = label_dtype(max_label)
    with atomic_path(path) as tmp:
        if not tiled:
            tifffile.imwrite(tmp, np.asarray(labels).astype(dtype, copy=False), compression="zlib")
        else:
            h, w = labels.shape
            t = LABEL_TILE

            def tiles() -> Iterator[np.ndarray]:
                for y in range(0, h, t):
                    band = np.asarray(labels[y:y + t])
                    for x in range(0, w, t):
                        tile = np.zeros((t, t), dtype)
                        part = band[:, x:x + t]
                        tile[:part.shape[0], :part.shape[1]] = part
                        yield tile

            tifffile.imwrite(tmp, tiles(), shape=(h, w), dtype=dtype, tile=(t, t), bigtiff=True,
                             compression="zlib")
    return path


@dataclass(frozen=True)
class ProductPaths:
    labels: Path
    csv: Path
    overlay: Path
    geojson: Path

    @classmethod
    def for_input(cls, name: str, out_dir: Path) -> ProductPaths:
        return cls(out_dir / f"{name}.labels.tif", out_dir / f"{name}.csv", out_dir / f"{name}.overlay.png",
                   out_dir / f"{name}.geojson")

    def all(self) -> tuple[Path, ...]:
        return self.labels, self.csv, self.overlay, self.geojson


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


def _block_products(labels: np.ndarray, src: ImageSource, outer: Window, core: Window,
                    scores: np.ndarray | None) -> tuple[list[dict], list[dict], int]:
    lab = np.asarray(labels[outer.slices])
    if not lab.any():
        return [], [], 0
    raw = src.read(outer)
    # Compact the labels present so regionprops' per-label tables stay block-sized, not image-sized.
    uniq, compact = _compact(lab)
    rows, feats, cut = [], [], 0
    h, w = src.shape
    for r in regionprops(compact, intensity_image=measure.gray_intensity(raw)):
        y0, x0, y1, x1 = r.bbox
        if not core.contains(y0 + outer.y0, x0 + outer.x0):
            continue
        if (y0 == 0 and outer.y0 > 0) or (x0 == 0 and outer.x0 > 0) or \
                (y1 == lab.shape[0] and outer.y1 < h) or (x1 == lab.shape[1] and outer.x1 < w):
            cut += 1
        row = measure.measure_regions([r], (outer.y0, outer.x0))[0]
        label = int(uniq[r.label])
        row["label"] = label
        if scores is not None:
            row[measure.SCORE_COLUMN] = round(float(scores[label - 1]), 5) if 0 < label <= len(scores) else ""
        rows.append(row)
        ring = geojson.mask_polygon(r.image, (y0 + outer.y0, x0 + outer.x0))
        if ring is not None:
            m = {"area": row["area"], "mean_intensity": row["mean_intensity"]}
            if scores is not None and row.get(measure.SCORE_COLUMN, "") != "":
                m["score"] = row[measure.SCORE_COLUMN]
            feats.append(geojson.feature(label, ring, m))
    return rows, feats, cut


def write_products(paths: ProductPaths, labels: np.ndarray, max_label: int, src: ImageSource,
                   norm: tuple[float, float], *, scores: np.ndarray | None = None, tiled: bool = False,
                   block: int = 4096, margin: int = 128, overview_side: int = 4096) -> int:
    """Write all four products; returns the number of nuclei (CSV rows)."""
    h, w = src.shape
    write_labels(paths.labels, labels, max_label, tiled=tiled)
    factor = overlay.overview_factor(h, w, overview_side)
    # Blocks aligned to the overview factor so each block fills whole overview cells.
    step = max(factor, (block // factor) * factor)
    ov = np.zeros((-(-h // factor), -(-w // factor), 3), np.uint8)
    n = cut_total = 0
    with atomic_path(paths.csv) as tcsv, atomic_path(paths.geojson) as tgj, \
            open(tcsv, "w", newline="", encoding="utf-8") as fcsv, open(tgj, "w", encoding="utf-8") as fgj:
        writer = csv.DictWriter(fcsv, fieldnames=measure.columns(scores is not None))
        writer.writeheader()
        feats = geojson.FeatureWriter(fgj)
        for b in block_grid(h, w, step, margin):
            rows, fs, cut = _block_products(labels, src, b.outer, b.core, scores)
            writer.writerows(rows)
            for f in fs:
                feats.add(f)
            n += len(rows)
            cut_total += cut
            core_lab = np.asarray(labels[b.core.slices])
            # Boundaries on the outer window so a contour on the block seam is still drawn.
            bnd = find_boundaries(np.asarray(labels[b.outer.slices]), mode="inner")
            bnd = bnd[b.core.y0 - b.outer.y0:b.core.y1 - b.outer.y0, b.core.x0 - b.outer.x0:b.core.x1 - b.outer.x0]
            rgb = overlay.display_rgb(src.read(b.core), *norm)
            small = overlay.reduce_block(rgb, bnd & (core_lab > 0), factor)
            oy, ox = b.core.y0 // factor, b.core.x0 // factor
            ov[oy:oy + small.shape[0], ox:ox + small.shape[1]] = small
        feats.close()
    if cut_total:
        log.warning("%s: %d nuclei larger than the block margin (%d px) may be measured incompletely",
                    paths.csv, cut_total, margin)
    with atomic_path(paths.overlay) as tmp:
        Image.fromarray(ov).save(tmp, format="PNG", compress_level=3)
    return n


SUMMARY_COLUMNS = ("input", "status", "n_nuclei", "height", "width", "megapixels", "seconds", "backend",
                   "labels", "error")


def write_summary(path: Path, rows: Sequence[dict]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path
