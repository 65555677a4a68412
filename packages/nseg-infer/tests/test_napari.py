"""The napari plugin, headless: npe2 validates the manifest, napari's ViewerModel opens nseg
outputs through the reader and takes the segmentation's layer (no Qt, no torch). The real window
(Qt, the worker thread, screenshots) is test_napari_window.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from infer_testkit import FakeDetector, synthetic_blobs

npe2 = pytest.importorskip("npe2", reason="the napari extra (npe2) is not installed")
MANIFEST = Path(__file__).resolve().parents[1] / "src" / "nseg_infer" / "napari.yaml"


def test_manifest_is_valid_and_installed():
    from npe2 import PluginManifest

    m = PluginManifest.from_file(MANIFEST)
    assert m.name == "nseg-infer"
    assert {c.id for c in m.contributions.commands} == {"nseg-infer.get_reader", "nseg-infer.segment_widget",
                                                        "nseg-infer.finetune_widget"}
    assert m.contributions.readers[0].filename_patterns == ["*.labels.tif", "*.geojson", "*.geojson.gz"]
    m.validate_imports()  # every python_name imports and is callable
    installed = PluginManifest.from_distribution("nseg-infer")  # the napari.manifest entry point
    widget = installed.contributions.widgets[0]
    assert widget.command == "nseg-infer.segment_widget" and not widget.autogenerate


@pytest.fixture(scope="module")
def outputs(unet_bundle, tmp_path_factory):
    import tifffile

    from nseg_infer.engine.predictor import Predictor
    from nseg_infer.runners.file_config import FileConfig
    from nseg_infer.runners.files import FileRunner

    d = tmp_path_factory.mktemp("napari")
    img, _ = synthetic_blobs((100, 130), 15, seed=4)
    tifffile.imwrite(d / "field.ome.tif", img, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.5,
                                                                   "PhysicalSizeY": 0.5})
    r = FileRunner(Predictor(unet_bundle), FileConfig(products="labels,csv,geojson")).process_file(d / "field.ome.tif", d)
    assert r.ok, r.error
    return r


def test_viewer_opens_labels_with_outlines(outputs):
    pytest.importorskip("napari", reason="the napari extra is not installed")
    from napari.components import ViewerModel

    from nseg_infer.runners.napari_plugin import get_reader

    labels_path, _csv, geojson_path = outputs.outputs
    assert get_reader(str(labels_path)) is not None and get_reader("scan.png") is None
    npe2.PluginManager.instance().discover()  # napari.Viewer does this on start; ViewerModel does not
    v = ViewerModel()
    v.open(str(labels_path), plugin="nseg-infer")
    assert [ly.name for ly in v.layers] == ["field nuclei", "field outlines"]
    lab, shapes = v.layers
    # No image open: pixels, as napari's own reader shows the image; the pixel size in metadata.
    assert lab.data.max() == outputs.n_nuclei and tuple(lab.scale) == (1.0, 1.0) == tuple(shapes.scale)
    assert lab.metadata["pixel_size_um"] == pytest.approx((0.5, 0.5))
    rows = lab.metadata["measurements"]
    assert len(rows) == outputs.n_nuclei and rows[0]["area_um2"] == pytest.approx(rows[0]["area"] * 0.25)
    assert len(shapes.data) == outputs.n_nuclei and list(shapes.features["label"]) == list(range(1, outputs.n_nuclei + 1))
    # Outline vertices lie on the boundary of their own nucleus (napari's pixel-centre coordinates).
    poly = shapes.data[0]
    assert np.all(np.abs(poly.mean(axis=0) - np.argwhere(lab.data == 1).mean(axis=0)) < 1.5)
    v.open(str(geojson_path), plugin="nseg-infer")
    assert len(v.layers) == 3 and v.layers[-1].name.startswith("field outlines")
    assert len(v.layers[-1].data) == outputs.n_nuclei


def test_reader_layers_take_the_transform_of_their_image(outputs):
    pytest.importorskip("napari", reason="the napari extra is not installed")
    from napari.layers import Image

    from nseg_infer.runners.napari_plugin import _read_one

    labels_path = outputs.outputs[0]
    img = np.zeros((100, 130), np.uint8)

    def where(*layers):
        lab, shapes = _read_one(labels_path, list(layers))
        assert lab[1].get("scale") == shapes[1].get("scale") and lab[1].get("translate") == shapes[1].get("translate")
        return lab[1].get("scale"), lab[1].get("translate")

    # napari's reader names the layer "field.ome" and shows pixels; a bioio reader shows µm.
    assert where(Image(img, name="field.ome")) == ((1.0, 1.0), (0.0, 0.0))
    assert where(Image(img, name="field", scale=(0.5, 0.5), translate=(10, 20))) == ((0.5, 0.5), (10.0, 20.0))
    rgb = Image(np.zeros((100, 130, 3), np.uint8), name="other", rgb=True, scale=(2, 2))
    assert where(rgb) == ((2.0, 2.0), (0.0, 0.0))  # the only image of that size
    assert where(Image(img, name="a", scale=(3, 3)), Image(img, name="b")) == (None, None)  # ambiguous: pixels
    assert where(Image(np.zeros((50, 50)), name="field", scale=(3, 3))) == (None, None)  # another size


@pytest.mark.parametrize("px", [0.325, 0.065])
def test_segment_layer_keeps_the_pixel_size_exactly(unet_bundle, px):
    pytest.importorskip("napari", reason="the napari extra is not installed")
    from napari.layers import Image

    from nseg_infer.runners.napari_plugin import counted_predictor, segment_layer

    img, _ = synthetic_blobs((90, 110), 12, seed=6)
    layer = Image(img, name="dapi", translate=(5, 7))
    data, meta, _ = segment_layer(layer, model=unet_bundle, pixel_size=px)
    assert meta["metadata"]["pixel_size_um"] == (px, px)  # not rounded to the widget's decimals
    assert meta["scale"] == (1.0, 1.0) and meta["translate"] == (5.0, 7.0)  # the image's transform
    rows = meta["metadata"]["measurements"]
    assert len(rows) == data.max() >= 10
    assert all(r["area_um2"] == pytest.approx(r["area"] * px * px, abs=5e-5) for r in rows)  # the CSV keeps 4 decimals
    # As typed in the widget's text field, with its unit.
    _, meta2, _ = segment_layer(layer, predictor=counted_predictor(unet_bundle), pixel_size=f" {px} µm")
    assert meta2["metadata"]["pixel_size_um"] == (px, px)


def test_layer_pixel_size_from_physical_units():
    pytest.importorskip("napari", reason="the napari extra is not installed")
    from napari.layers import Image

    from nseg_infer.runners.napari_plugin import layer_pixel_size, parse_pixel_size

    img = np.zeros((8, 8))
    assert layer_pixel_size(Image(img, scale=(0.325, 0.325), units=("micrometer", "micrometer"))) == pytest.approx(0.325)
    assert layer_pixel_size(Image(img, scale=(65, 65), units=("nanometer", "nanometer"))) == pytest.approx(0.065)
    assert layer_pixel_size(Image(img, scale=(0.325, 0.325))) is None  # pixels
    assert parse_pixel_size("") is None and parse_pixel_size(0) is None and parse_pixel_size("0.0651") == 0.0651
    with pytest.raises(ValueError, match="not a number of µm"):
        parse_pixel_size("0,325")


def test_progress_counts_every_model_tile(unet_bundle):
    pytest.importorskip("napari", reason="the napari extra is not installed")
    from napari.layers import Image

    from nseg_infer.runners.napari_plugin import counted_predictor, expected_tiles, segment_layer

    img, _ = synthetic_blobs((300, 420), 40, seed=2)  # several 128 px tiles of the test bundle
    predictor = counted_predictor(unet_bundle)
    seen: list[int] = []
    predictor.backend.on_tiles = seen.append
    try:
        segment_layer(Image(img, name="big"), predictor=predictor)
        assert sum(seen) == expected_tiles(predictor, img.shape, None, None) > 4
    finally:
        predictor.backend.on_tiles = None
    # Enlarged to the default model's minimum nucleus size (14 px): 2.8x larger, 512 px tiles.
    default = counted_predictor(None)
    default.backend.on_tiles = seen.append
    seen.clear()
    try:
        segment_layer(Image(img, name="big"), predictor=default, diameter=5.0)
        assert sum(seen) == expected_tiles(default, img.shape, 5.0, None) == 6
    finally:
        default.backend.on_tiles = None


def test_progress_counts_every_detector_tile(maskrcnn_bundle):
    pytest.importorskip("napari", reason="the napari extra is not installed")
    from napari.layers import Image

    from nseg_infer.engine.bundle import load_bundle
    from nseg_infer.engine.predictor import Predictor, RunConfig
    from nseg_infer.runners.napari_plugin import TileCounter, expected_tiles, segment_layer

    seen: list[int] = []
    counter = TileCounter(FakeDetector())
    counter.on_tiles = seen.append
    predictor = Predictor(load_bundle(maskrcnn_bundle), RunConfig(device="cpu"), backend=counter)
    for shape in ((300, 420), (90, 1000), (40, 50)):
        seen.clear()
        img, _ = synthetic_blobs(shape, 10, seed=3)
        segment_layer(Image(img, name="d"), predictor=predictor)
        assert sum(seen) == expected_tiles(predictor, shape, None, None) >= 1, shape


def test_segment_command_on_an_image_layer(unet_bundle):
    pytest.importorskip("napari", reason="the napari extra is not installed")
    from napari.components import ViewerModel
    from napari.layers import Image

    from nseg_infer.runners.napari_plugin import segment_layer

    img, _ = synthetic_blobs((90, 110), 12, seed=6)
    v = ViewerModel()
    layer = v.add_image(img, name="dapi", scale=(0.3, 0.3))
    data, meta, kind = segment_layer(layer, model=unet_bundle)
    v._add_layer_from_data(data, meta, kind)
    out = v.layers["dapi nuclei"]
    assert kind == "labels" and out.data.shape == img.shape and out.data.max() >= 10
    assert tuple(out.scale) == pytest.approx((0.3, 0.3)) and len(out.metadata["measurements"]) == out.data.max()
    stack = Image(np.stack([np.zeros_like(img), img]), name="two")
    # Errors in the widget's words, not the command line's flags.
    with pytest.raises(ValueError, match=r"axes CYX.*'channel' N.*Segment nuclei widget") as e:
        segment_layer(stack, model=unet_bundle)
    assert "--channel" not in str(e.value)
    from nseg_data.errors import DataError

    with pytest.raises(DataError, match=r"'channel' 5: channel 5 does not exist.*axes CYX") as e:
        segment_layer(stack, model=unet_bundle, channel=5)
    assert "--channel" not in str(e.value)
    data2, _, _ = segment_layer(stack, model=unet_bundle, channel=1)
    np.testing.assert_array_equal(data2, data)
    data3, _, _ = segment_layer(stack, model=unet_bundle, channels="1")
    np.testing.assert_array_equal(data3, data)


def test_layer_names_are_stemmed_as_outputs_are_named():
    from nseg_infer.runners.napari_plugin import _image_stem
    from nseg_infer.sinks.names import stem

    for name in ("scan.ome.tif", "plate.TIFF", "well.png", "slide.czi"):
        assert _image_stem(name) == stem(Path(name)) != name
    assert _image_stem("scan.ome") == "scan"
    # A dot that is no image suffix is part of the name.
    assert _image_stem("cells 1.5x") == "cells 1.5x"
