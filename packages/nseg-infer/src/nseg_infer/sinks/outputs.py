"""Writing a file's products: labels OME-TIFF, measurement CSV, overlay PNG, GeoJSON (plain or
gzipped) and an ImageJ ROI set; `products` chooses which (default: the first four).

Everything is written to a temp file beside the target and renamed. Products are computed block
by block over the label canvas (an array, or a disk-backed memmap for huge images), so memory
does not grow with the image; a nucleus is measured by the block holding its bounding box's
top-left corner, with a margin so it is seen whole.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nseg_data.atomic import atomic_path
from PIL import Image

from nseg_infer.engine.tiling import Window, block_grid, cut_by_margin
from nseg_infer.sinks import geojson, measure, overlay
from nseg_infer.sinks.labelstiff import write_ome_labels
from nseg_infer.sinks.rois import RoiZipWriter
from nseg_infer.sources.imageio import ImageSource

log = logging.getLogger(__name__)

PRODUCTS = ("labels", "csv", "overlay", "geojson", "geojson.gz", "rois")
DEFAULT_PRODUCTS = ("labels", "csv", "overlay", "geojson")
# Products that look like input images: `run` and `watch` skip them, so results may be written into
# the input folder.
PRODUCT_SUFFIXES = (".labels.tif", ".overlay.png")


def parse_products(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`labels,csv,geojson` (or a sequence) -> the products in their canonical order."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else [str(n).strip() for n in spec]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in PRODUCTS]
    if unknown:
        raise ValueError(f"unknown product {unknown[0]!r}; choose from {', '.join(PRODUCTS)}")
    if not names:
        raise ValueError(f"no products chosen; choose from {', '.join(PRODUCTS)}")
    return tuple(p for p in PRODUCTS if p in names)


def label_dtype(max_label: int) -> np.dtype:
    return np.dtype(np.uint16) if max_label <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def write_labels(path: Path, labels: np.ndarray, max_label: int, *, tiled: bool,
                 pixel_size_um: tuple[float, float] | None = None, name: str = "") -> Path:
    """OME-TIFF, uint16 when the labels fit, else uint32, zlib-compressed, carrying the pixel size.
    `tiled` writes a tiled BigTIFF tile by tile from `labels` (typically a memmap), never holding
    more than one tile row; large images also get a nearest-neighbour pyramid (`labelstiff`)."""
    with atomic_path(path) as tmp:
        write_ome_labels(tmp, labels, label_dtype(max_label), tiled=tiled, pixel_size_um=pixel_size_um, name=name)
    return path


@dataclass(frozen=True)
class ProductPaths:
    labels: Path
    csv: Path
    overlay: Path
    geojson: Path
    geojson_gz: Path | None = None
    rois: Path | None = None
    products: tuple[str, ...] = DEFAULT_PRODUCTS

    def __post_init__(self) -> None:
        parse_products(self.products)
        missing = [p for p in self.products if self.path(p) is None]
        if missing:
            raise ValueError(f"no path given for product(s) {', '.join(missing)}")

    @classmethod
    def for_input(cls, name: str, out_dir: Path, products: Sequence[str] = DEFAULT_PRODUCTS) -> ProductPaths:
        return cls(out_dir / f"{name}.labels.tif", out_dir / f"{name}.csv", out_dir / f"{name}.overlay.png",
                   out_dir / f"{name}.geojson", out_dir / f"{name}.geojson.gz", out_dir / f"{name}.rois.zip",
                   parse_products(products))

    def path(self, product: str) -> Path:
        return {"labels": self.labels, "csv": self.csv, "overlay": self.overlay, "geojson": self.geojson,
                "geojson.gz": self.geojson_gz, "rois": self.rois}[product]

    def all(self) -> tuple[Path, ...]:
        """The chosen products' paths, in the order of PRODUCTS."""
        return tuple(self.path(p) for p in self.products)


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


def block_products(labels: np.ndarray, src: ImageSource, outer: Window, core: Window,
                   scores: np.ndarray | None, opts: MeasureOptions = MeasureOptions(), *,
                   polygons: bool = True) -> tuple[list[dict], list[tuple[int, list[list[float]]]], int]:
    """(rows, (label, outline ring) pairs, nuclei possibly cut by the margin) of the nuclei whose
    bounding box starts in `core`."""
    lab = np.asarray(labels[outer.slices])
    if not lab.any():
        return [], [], 0
    intensities = [measure.gray_intensity(src.read(outer))]
    if opts.channels is not None:
        chan = opts.channels.read(outer)
        intensities += [chan[..., c] for c in range(chan.shape[2])]
    # Compact the labels present so the per-label table stays block-sized, not image-sized.
    uniq, compact = _compact(lab)
    table = measure.region_table(compact, intensities)
    rows, rings, cut = [], [], 0
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
        if polygons:
            ring = geojson.mask_polygon(compact[table.slices(k)] == k + 1, (y0 + outer.y0, x0 + outer.x0))
            if ring is not None:
                rings.append((label, ring))
    return rows, rings, cut


def measure_all(labels: np.ndarray, src: ImageSource, *, scores: np.ndarray | None = None,
                opts: MeasureOptions = MeasureOptions(), block: int = 2048, margin: int = 128) -> list[dict]:
    """Every row, as `write_products` writes them to the CSV."""
    h, w = src.shape
    out: list[dict] = []
    for b in block_grid(h, w, block, margin):
        out.extend(block_products(labels, src, b.outer, b.core, scores, opts, polygons=False)[0])
    return out


def _count_labels(labels: np.ndarray, band: int = 1024) -> int:
    top = 0
    for y in range(0, labels.shape[0], band):
        top = max(top, int(np.asarray(labels[y:y + band]).max(initial=0)))
    present = np.zeros(top + 1, bool)
    for y in range(0, labels.shape[0], band):
        present[np.asarray(labels[y:y + band])] = True
    return int(present[1:].sum())


def draw_overlay(ov: np.ndarray, labels: np.ndarray, src: ImageSource, core: Window, factor: int,
                 norm: tuple[float, float], band: int = 512) -> None:
    """Draw `core` into the overlay `ov` (downsampled by `factor`), `band` rows at a time; each
    band's contours need only a one-pixel frame of labels around it, so a contour on a block seam
    is still drawn. `core` starts on a multiple of `factor`, and so does every band."""
    h, w = labels.shape
    band = max(factor, (band // factor) * factor)
    for y0 in range(core.y0, core.y1, band):
        win = Window(y0, min(y0 + band, core.y1), core.x0, core.x1)
        ctx = Window(win.y0 - 1, win.y1 + 1, win.x0 - 1, win.x1 + 1).clip(h, w)
        # Past the image's edge the edge pixels repeat, as find_boundaries' reflection does.
        pads = ((1 - (win.y0 - ctx.y0), 1 - (ctx.y1 - win.y1)), (1 - (win.x0 - ctx.x0), 1 - (ctx.x1 - win.x1)))
        framed = np.pad(np.asarray(labels[ctx.slices]), pads, mode="edge")
        small = overlay.reduce_block(src.read(win), overlay.boundaries(framed), factor, *norm)
        oy, ox = win.y0 // factor, win.x0 // factor
        ov[oy:oy + small.shape[0], ox:ox + small.shape[1]] = small


def write_products(paths: ProductPaths, labels: np.ndarray, max_label: int, src: ImageSource,
                   norm: tuple[float, float], *, scores: np.ndarray | None = None, tiled: bool = False,
                   block: int = 2048, margin: int = 128, overview_side: int = 4096,
                   opts: MeasureOptions | None = None) -> int:
    """Write the products chosen in `paths`; returns the number of nuclei (CSV rows)."""
    h, w = src.shape
    want = set(paths.products)
    if opts is None:
        opts = MeasureOptions(image=paths.labels.name.removesuffix(".labels.tif"))
    if "labels" in want:
        write_labels(paths.labels, labels, max_label, tiled=tiled, pixel_size_um=opts.pixel_size_um, name=opts.image)
    factor = overlay.overview_factor(h, w, overview_side)
    # Blocks aligned to the overview factor so each block fills whole overview cells.
    step = max(factor, (block // factor) * factor)
    ov = np.zeros((-(-h // factor), -(-w // factor), 3), np.uint8) if "overlay" in want else None
    measuring = bool(want & {"csv", "geojson", "geojson.gz", "rois"})
    n = cut_total = 0
    with contextlib.ExitStack() as stack:
        # Files are entered after their atomic paths, so each closes before its rename.
        writer = None
        if "csv" in want:
            fcsv = stack.enter_context(open(stack.enter_context(atomic_path(paths.csv)), "w", newline="",
                                            encoding="utf-8"))
            writer = csv.DictWriter(fcsv, fieldnames=opts.columns(scores is not None))
            writer.writeheader()
        feats = []
        if "geojson" in want:
            feats.append(geojson.FeatureWriter(stack.enter_context(
                open(stack.enter_context(atomic_path(paths.geojson)), "w", encoding="utf-8"))))
        if "geojson.gz" in want:
            feats.append(geojson.FeatureWriter(stack.enter_context(
                gzip.open(stack.enter_context(atomic_path(paths.geojson_gz)), "wt", encoding="utf-8"))))
        rois = stack.enter_context(RoiZipWriter(stack.enter_context(atomic_path(paths.rois)))) \
            if "rois" in want else None
        for b in block_grid(h, w, step, margin):
            if measuring:
                rows, rings, cut = block_products(labels, src, b.outer, b.core, scores, opts,
                                                  polygons=bool(feats) or rois is not None)
                if writer is not None:
                    writer.writerows(rows)
                by_label = {row["label"]: row for row in rows}
                for label, ring in rings:
                    if feats:
                        f = geojson.feature(label, ring, by_label[label], image=opts.image)
                        for fw in feats:
                            fw.add(f)
                    if rois is not None:
                        rois.add(label, ring)
                n += len(rows)
                cut_total += cut
            if ov is not None:
                draw_overlay(ov, labels, src, b.core, factor, norm)
        for fw in feats:
            fw.close()
    if not measuring:
        n = _count_labels(labels)
    if cut_total:
        log.warning("%s: %d nuclei larger than the block margin (%d px) may be measured incompletely",
                    paths.csv, cut_total, margin)
    if ov is not None:
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
