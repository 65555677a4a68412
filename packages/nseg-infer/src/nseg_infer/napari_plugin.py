"""napari plugin (npe2 manifest: `napari.yaml` beside this file; `pip install 'nseg-infer[napari]'`).

A reader for nseg's outputs (`NAME.labels.tif` as a labels layer, with `NAME.geojson` beside it
as a shapes layer of outlines; or a `.geojson`/`.geojson.gz` alone), and a command that
segments an image layer with the packaged model or a chosen bundle, through `nseg_infer.segment`
(ONNX Runtime, no torch). napari is imported only by napari itself: the functions here build
plain layer-data tuples, so they run (and are tested) without a display.
"""

# No `from __future__ import annotations`: magicgui builds the widget from these annotations and
# resolves the napari ones by importing napari, which it cannot do for postponed `Path | None`.
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # napari is napari's to import: annotations for magicgui's widget only
    import napari

LayerData = tuple[Any, dict, str]
OUTLINE = "yellow"


def _name(path: Path) -> str:
    n = path.name
    for ext in (".labels.tif", ".geojson.gz", ".geojson"):
        if n.endswith(ext):
            return n[: -len(ext)]
    return path.stem


def _is_ours(path: Path) -> bool:
    return path.name.endswith((".labels.tif", ".geojson", ".geojson.gz"))


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """npe2 reader hook: a reader for nseg outputs, None for anything else."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_is_ours(Path(p)) for p in paths):
        return None
    return read_outputs


def read_outputs(path: str | list[str]) -> list[LayerData]:
    layers: list[LayerData] = []
    for p in [path] if isinstance(path, str) else path:
        layers.extend(_read_one(Path(p)))
    return layers


def _read_one(path: Path) -> list[LayerData]:
    name = _name(path)
    if path.name.endswith(".labels.tif"):
        labels, scale = _read_labels(path)
        layers = [(labels, {"name": f"{name} nuclei", "scale": scale}, "labels")]
        for gj in (path.with_name(f"{name}.geojson"), path.with_name(f"{name}.geojson.gz")):
            if gj.is_file():
                layers.append(_shapes(gj, name, scale))
                break
        return layers
    return [_shapes(path, name, (1.0, 1.0))]


def _read_labels(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """Level 0 of the label OME-TIFF and its pixel size (µm) as the layer scale, so the labels
    line up with a calibrated image opened beside them."""
    import tifffile

    from nseg_infer.imageinfo import tiff_pixel_size

    with tifffile.TiffFile(path) as tf:
        labels = tf.series[0].levels[0].asarray()
        px = tiff_pixel_size(tf, tf.pages[0])
    return labels, px if px is not None else (1.0, 1.0)


def _shapes(path: Path, name: str, scale: tuple[float, float]) -> LayerData:
    """Outlines as napari polygons ((y, x) vertices; the ring's pixel-edge coordinates shifted by
    half a pixel to napari's pixel-centre convention), the label as a feature."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        feats = json.load(f).get("features", [])
    polys, labels = [], []
    for feat in feats:
        ring = np.asarray(feat["geometry"]["coordinates"][0], np.float64)[:-1]
        polys.append(ring[:, ::-1] - 0.5)
        labels.append(int(feat.get("properties", {}).get("label", len(labels) + 1)))
    meta = {"name": f"{name} outlines", "shape_type": "polygon", "edge_color": OUTLINE, "face_color": "transparent",
            "edge_width": 1, "features": {"label": labels}, "scale": scale}
    return polys, meta, "shapes"


def segment_layer(image: "napari.layers.Image", model: Path | None = None, channel: int = -1,
                  diameter: float = 0.0, pixel_size: float = 0.0) -> "napari.types.LayerDataTuple":
    """Segment an image layer: 2-D gray or RGB, or channels along the first axis with `channel`
    (0-based; -1: none). `diameter` (px) and `pixel_size` (µm) as on the command line (0: not
    given). Returns a labels layer with the measurements in its metadata."""
    from nseg_infer.api import segment

    data = np.asarray(image.data)
    rgb = bool(getattr(image, "rgb", False))
    if data.ndim > 3 or (data.ndim == 3 and not rgb and channel < 0):
        raise ValueError(f"layer {image.name!r} has shape {data.shape}: nseg segments 2-D images; select a "
                         "2-D or RGB layer, or give the channel (0-based, first axis) of a channel stack")
    result = segment(data, model=model or None, channel=channel if channel >= 0 else None,
                     channel_axis=0 if data.ndim == 3 and not rgb else None,
                     diameter=diameter or None, pixel_size=pixel_size or None, name=image.name)
    scale = tuple(getattr(image, "scale", (1.0, 1.0)))[-2:]
    translate = tuple(getattr(image, "translate", (0.0, 0.0)))[-2:]
    meta = {"name": f"{image.name} nuclei", "scale": scale, "translate": translate,
            "metadata": {"measurements": result.measurements, "pixel_size_um": result.pixel_size_um}}
    return result.labels, meta, "labels"
