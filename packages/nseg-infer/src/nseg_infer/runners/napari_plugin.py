"""napari plugin (npe2 manifest: `napari.yaml` beside this file; `pip install 'nseg-infer[napari]'`).

A reader for nseg's outputs (`NAME.labels.tif` as a labels layer, with `NAME.geojson` beside it
as a shapes layer of outlines; or a `.geojson`/`.geojson.gz` alone), and a dock widget that
segments an image layer with the packaged model, a chosen bundle or a bioimage.io package made by
nseg-export, through `nseg_infer.runners.api.segment_with` (ONNX Runtime, no torch) in a worker thread.

Where nseg's layers sit (one rule): **an nseg layer takes the world transform (scale and
translate) of the image layer it belongs to**, so labels and outlines coincide with the image
whichever reader opened it: napari's own reader shows an OME-TIFF in pixels (scale 1), bioio-based
readers in µm. The widget copies the transform of the layer it segmented; the reader copies it
from the open image layer of the same name (`NAME`, `NAME.ome`, ...) and size, and uses pixels
(scale 1, napari's default) when none is open. The pixel size itself is never a layer scale: it
is in the layer's `metadata["pixel_size_um"]` and in the µm columns of the measurements.

The functions that build layer data (`read_outputs`, `segment_layer`) import neither napari nor
Qt and are tested headless; the widget (`SegmentWidget`, a magicgui Container made on first use) is built by
napari, which has both.
"""

# No `from __future__ import annotations`: napari and magicgui read annotations at run time.
import csv
import gzip
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nseg_infer.sinks.names import output_stem, stem
from nseg_infer.sources.formats import SUPPORTED

if TYPE_CHECKING:  # napari is napari's to import
    import napari

LayerData = tuple[Any, dict, str]
OUTLINE = "yellow"
READ_PRODUCTS = ("labels", "geojson.gz", "geojson")  # the outputs the reader opens


def _name(path: Path) -> str:
    return output_stem(path, READ_PRODUCTS) or path.stem


def _is_ours(path: Path) -> bool:
    return output_stem(path, READ_PRODUCTS) is not None


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


# -- where layers sit ---------------------------------------------------------------------------

def _image_stem(layer_name: str) -> str:
    """A layer name as napari's readers make it from a file name, stemmed as outputs are named
    (`sinks.names.stem`) when it ends in a suffix nseg reads; a reader's bare `.ome` goes too."""
    p = Path(layer_name)
    if p.suffix.lower() in SUPPORTED:
        return stem(p)
    return layer_name[:-4] if layer_name.lower().endswith(".ome") else layer_name


def _yx_shape(layer) -> tuple[int, ...]:
    shape = tuple(np.shape(layer.data))
    return shape[-3:-1] if getattr(layer, "rgb", False) else shape[-2:]


def layer_transform(name: str, shape: tuple[int, int], layers) -> dict[str, tuple[float, ...]]:
    """`scale` and `translate` (y, x) of the image layer among `layers` that `name`'s outputs
    belong to: same name (as a reader names the image file) and same y, x size; failing a name
    match, the only image layer of that size. Empty when none: napari's default, pixels."""
    images = [ly for ly in layers if type(ly).__name__ == "Image" and _yx_shape(ly) == tuple(shape)]
    named = [ly for ly in images if _image_stem(ly.name) == name or ly.name == name]
    pick = named[0] if named else (images[0] if len(images) == 1 else None)
    if pick is None:
        return {}
    return {"scale": tuple(float(s) for s in pick.scale[-2:]),
            "translate": tuple(float(t) for t in pick.translate[-2:])}


def _open_layers() -> list:
    """The current viewer's layers when napari is running (never imports napari)."""
    napari = sys.modules.get("napari")
    viewer = napari.current_viewer() if napari is not None and hasattr(napari, "current_viewer") else None
    return list(viewer.layers) if viewer is not None else []


# -- reader -------------------------------------------------------------------------------------

def _read_one(path: Path, layers: list | None = None) -> list[LayerData]:
    name = _name(path)
    if path.name.endswith(".labels.tif"):
        labels, px = _read_labels(path)
        where = layer_transform(name, labels.shape[-2:], _open_layers() if layers is None else layers)
        meta: dict[str, Any] = {"pixel_size_um": px, "source": str(path)}
        table = path.with_name(f"{name}.csv")
        if table.is_file():
            meta["measurements"] = _read_csv(table)
        out = [(labels, {"name": f"{name} nuclei", "metadata": meta, **where}, "labels")]
        for gj in (path.with_name(f"{name}.geojson"), path.with_name(f"{name}.geojson.gz")):
            if gj.is_file():
                out.append(_shapes(gj, name, where, px))
                break
        return out
    return [_shapes(path, name, {}, None)]


def _read_labels(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Level 0 of the label OME-TIFF and its pixel size (y, x) in µm, or None."""
    import tifffile

    from nseg_infer.sources.imageinfo import tiff_pixel_size

    with tifffile.TiffFile(path) as tf:
        labels = tf.series[0].levels[0].asarray()
        px = tiff_pixel_size(tf, tf.pages[0])
    return labels, px


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def _shapes(path: Path, name: str, where: dict, px: tuple[float, float] | None) -> LayerData:
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
            "edge_width": 1, "features": {"label": labels}, "metadata": {"pixel_size_um": px}, **where}
    return polys, meta, "shapes"


# -- segmentation -------------------------------------------------------------------------------

def parse_pixel_size(text: str | float | None) -> float | None:
    """The widget's pixel size (µm), exactly as typed: '' or 0 is "not given". A text field,
    not a spin box, because a spin box rounds to its decimals (0.325 -> 0.33, 0.004 -> 0)."""
    if text is None:
        return None
    s = str(text).strip().replace("µm", "").replace("um", "").strip()
    if not s:
        return None
    try:
        v = float(s)
    except ValueError:
        raise ValueError(f"pixel size {text!r} is not a number of µm (e.g. 0.325)") from None
    if v < 0 or not np.isfinite(v):
        raise ValueError(f"pixel size must be a positive number of µm, got {text!r}")
    return v or None


def layer_pixel_size(layer) -> float | None:
    """µm per pixel of an image layer whose scale a reader set in physical units (napari's
    `units`), e.g. bioio's readers; None for a layer in pixels (napari's own reader)."""
    factors = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3}
    units = [str(u) for u in (getattr(layer, "units", None) or ())][-2:]
    if len(units) != 2 or units[0] != units[1] or units[0] not in factors:
        return None
    sy, sx = (float(s) * factors[units[0]] for s in layer.scale[-2:])
    return float(np.sqrt(sy * sx)) if sy > 0 and sx > 0 else None


class TileCounter:
    """A backend wrapper that reports the tiles each model call ran, so a widget can show
    progress: `on_tiles(n)` is called from the thread that ran the call (one of the backend's lanes)."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.name = getattr(backend, "name", type(backend).__name__)
        self.lanes = getattr(backend, "lanes", 1)
        self.on_tiles: Callable[[int], None] | None = None

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self.backend.run(batch)
        if self.on_tiles is not None:
            self.on_tiles(int(batch.shape[0]))
        return out


_PREDICTORS: dict[str, Any] = {}
_PREDICTORS_LOCK = threading.Lock()


def counted_predictor(model: str | Path | None):
    """One Predictor per model for the widget, its backend wrapped in a TileCounter."""
    from nseg_infer.engine.backends import create_backend
    from nseg_infer.engine.bundle import load_bundle
    from nseg_infer.engine.predictor import Predictor, RunConfig

    key = str(model or "default")
    with _PREDICTORS_LOCK:
        if key not in _PREDICTORS:
            bundle = load_bundle(model or None)
            _PREDICTORS[key] = Predictor(bundle, RunConfig(), backend=TileCounter(create_backend(bundle, "auto")))
        return _PREDICTORS[key]


def expected_tiles(predictor, shape: tuple[int, int], diameter: float | None, pixel_size: float | None) -> int:
    """Model tiles of an image of `shape` (after rescaling to the model's scale), for a progress bar."""
    from nseg_infer.runners.prepare import model_shape
    from nseg_infer.sources.options import InputOptions

    # A layer's pixel size is all there is to know of it, so no pixel size means no rescaling.
    opts = InputOptions(pixel_size_um=pixel_size or None, diameter=diameter)
    h, w = model_shape(predictor.bundle, tuple(shape), opts) or tuple(shape)
    if predictor.bundle.kind == "maskrcnn":  # the detector's own fixed-size tiles, as `predict` runs them
        return len(predictor.maskrcnn_tiles(h, w))
    return len(predictor.grid(h, w))


def segment_layer(image: "napari.layers.Image", model: str | Path | None = None, channel: int = -1,
                  channels: str = "", diameter: float = 0.0, pixel_size: str | float = "",
                  *, predictor=None) -> "napari.types.LayerDataTuple":
    """Segment an image layer: 2-D gray or RGB, or channels along the first axis with `channel`
    (0-based; -1: none) or `channels` ("0,2,1" onto R, G, B). `diameter` (px; 0: not given);
    `pixel_size` (µm, kept exactly; '' or 0: the layer's own if its reader set µm, else none).
    Returns a labels layer with the image layer's scale and translate, the measurements and
    pixel size in its metadata."""
    from nseg_infer.runners.api import segment_with
    from nseg_infer.sources.channels import NAPARI, ChannelChoice
    from nseg_infer.sources.options import InputOptions

    data = np.asarray(image.data)
    rgb = bool(getattr(image, "rgb", False))
    has_choice = channel >= 0 or bool(str(channels).strip())
    if data.ndim > 3 or (data.ndim == 3 and not rgb and not has_choice):
        raise ValueError(f"layer {image.name!r} has shape {data.shape} (axes {'CYX' if data.ndim == 3 else '...YX'}): "
                         "nseg segments 2-D images; select a 2-D or RGB layer, or, for channels along the first "
                         f"axis, {NAPARI.how}")
    px = parse_pixel_size(pixel_size) or layer_pixel_size(image)
    choice = ChannelChoice.parse(channel if channel >= 0 else None, str(channels).strip() or None, wording=NAPARI)
    opts = InputOptions(choice, px, diameter or None)
    result = segment_with(predictor or counted_predictor(model), data, opts,
                          channel_axis=0 if data.ndim == 3 and not rgb else None, name=image.name)
    meta = {"name": f"{image.name} nuclei", "scale": tuple(float(s) for s in image.scale[-2:]),
            "translate": tuple(float(t) for t in image.translate[-2:]),
            "metadata": {"measurements": result.measurements, "pixel_size_um": result.pixel_size_um,
                         "rescale_factor": result.rescale_factor}}
    return result.labels, meta, "labels"


def widget_class(namespace: dict, name: str, make: Callable[[], type]) -> type:
    """A dock widget's class, made on first use and kept in its module: the class subclasses
    magicgui's Container, and importing a plugin module (the reader, headless tests) must not need
    magicgui or Qt."""
    namespace[name] = make()
    return namespace[name]


def __getattr__(name: str):
    if name == "SegmentWidget":
        return widget_class(globals(), name, _segment_widget_class)
    raise AttributeError(name)


def _segment_widget_class():
    from magicgui.widgets import (
        ComboBox,
        Container,
        FloatSpinBox,
        Label,
        LineEdit,
        ProgressBar,
        PushButton,
        SpinBox,
    )

    class SegmentWidget(Container):
        """The dock widget: choose an image layer and options, press Segment; the segmentation
        runs in a worker thread (the viewer stays responsive) with a tile progress bar, and its
        labels layer is added when done. Errors show in the widget and as a napari notification.
        `worker` is the running worker (None when idle)."""

        def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
            from napari.layers import Image

            self.viewer = viewer = napari_viewer  # napari passes the viewer to a parameter of this name
            self.image = ComboBox(label="image", choices=lambda _w: [(ly.name, ly) for ly in viewer.layers
                                                                    if isinstance(ly, Image)])
            self.model = LineEdit(label="model", value="default", tooltip="default, maskrcnn, a bundle folder, or a "
                                  "bioimage.io package (MODEL.zip) made by nseg-export")
            self.channel = SpinBox(label="channel", value=-1, min=-1, max=255, tooltip="nuclear channel, 0-based (-1: none)")
            self.channels = LineEdit(label="channels", value="", tooltip="up to three channels onto R,G,B, e.g. 0,2,1")
            self.diameter = FloatSpinBox(label="diameter (px)", value=0.0, min=0.0, max=10000.0, step=0.5,
                                         tooltip="typical nucleus diameter in pixels (0: not given)")
            self.pixel_size = LineEdit(label="pixel size (µm)", value="", tooltip="µm per pixel, kept exactly "
                                       "(empty: from the layer, if its reader set µm)")
            self.run_button = PushButton(text="Segment")
            self.progress = ProgressBar(label="progress", value=0, min=0, max=1, visible=False)
            self.status = Label(label="status", value="")
            super().__init__(widgets=[self.image, self.model, self.channel, self.channels, self.diameter,
                                      self.pixel_size, self.run_button, self.progress, self.status])
            self.worker = None
            viewer.layers.events.inserted.connect(self._layers_changed)
            viewer.layers.events.removed.connect(self._layers_changed)
            self.run_button.changed.connect(self.start)

        def _layers_changed(self, _event=None) -> None:
            self.image.reset_choices()

        def start(self) -> None:
            from napari.qt.threading import create_worker
            from superqt.utils import ensure_main_thread

            layer = self.image.value
            if layer is None:
                self.status.value = "open an image first"
                return
            try:
                predictor = counted_predictor(self.model.value.strip() or None)
                px = parse_pixel_size(self.pixel_size.value) or layer_pixel_size(layer)
                shape = np.shape(layer.data)
                yx = shape[-3:-1] if layer.rgb else shape[-2:]
                self.progress.max = expected_tiles(predictor, yx, self.diameter.value or None, px)
            except (ValueError, OSError) as e:
                self._failed(e)
                return

            @ensure_main_thread
            def tiles_done(n: int) -> None:  # called from a model lane's thread; runs in the GUI's
                self.progress.value = min(self.progress.max, self.progress.value + n)

            predictor.backend.on_tiles = tiles_done
            self.progress.value = 0
            self.progress.visible = True
            self.run_button.enabled = False
            self.status.value = f"segmenting {layer.name!r} ({self.progress.max} tiles)..."
            worker = create_worker(segment_layer, layer, None, self.channel.value, self.channels.value,
                                   self.diameter.value, self.pixel_size.value, predictor=predictor,
                                   _start_thread=False)
            worker.returned.connect(self._finished)
            worker.errored.connect(self._failed)
            self.worker = worker
            worker.start()

        def _finished(self, result) -> None:
            data, meta, kind = result
            getattr(self.viewer, f"add_{kind}")(data, **meta)
            self.status.value = f"{int(data.max()) if data.size else 0} nuclei in {meta['name']!r}"
            self.progress.value = self.progress.max
            self.run_button.enabled = True
            self.worker = None

        def _failed(self, exc: Exception) -> None:
            from napari.utils.notifications import show_error

            self.status.value = f"error: {exc}"
            self.progress.visible = False
            self.run_button.enabled = True
            self.worker = None
            show_error(f"nseg: {exc}")

    return SegmentWidget
