"""The names of outputs: `OUT/NAME` plus one suffix per product, NAME being the input's stem. The
runners, the sinks and the napari reader all name files by these rules."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SUFFIXES = {"labels": ".labels.tif", "csv": ".csv", "overlay": ".overlay.png", "geojson": ".geojson",
            "geojson.gz": ".geojson.gz", "rois": ".rois.zip", "zarr": ".ome.zarr"}
# Products that look like input images: `run` and `watch` skip them, so results may be written into
# the input folder.
PRODUCT_SUFFIXES = (SUFFIXES["labels"], SUFFIXES["overlay"])
# An OME-TIFF's name ends in two suffixes, both dropped from its stem.
_DOUBLE = (".ome.tiff", ".ome.tif")


def stem(path: Path) -> str:
    """NAME, the stem of input `path` its outputs are named by."""
    name = path.name
    for ext in _DOUBLE:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def output_stem(path: Path, products: Iterable[str]) -> str | None:
    """NAME when `path` is the output of one of `products` (`OUT/NAME` plus its suffix), else None."""
    for product in products:
        if path.name.endswith(SUFFIXES[product]):
            return path.name[: -len(SUFFIXES[product])]
    return None
