"""The napari plugin, headless: npe2 validates the manifest, napari's ViewerModel opens nseg
outputs through the reader and takes the segment command's layer (no Qt, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from infer_testkit import synthetic_blobs

npe2 = pytest.importorskip("npe2", reason="the napari extra (npe2) is not installed")
MANIFEST = Path(__file__).resolve().parents[1] / "src" / "nseg_infer" / "napari.yaml"


def test_manifest_is_valid_and_installed():
    from npe2 import PluginManifest

    m = PluginManifest.from_file(MANIFEST)
    assert m.name == "nseg-infer"
    assert {c.id for c in m.contributions.commands} == {"nseg-infer.get_reader", "nseg-infer.segment"}
    assert m.contributions.readers[0].filename_patterns == ["*.labels.tif", "*.geojson", "*.geojson.gz"]
    m.validate_imports()  # every python_name imports and is callable
    installed = PluginManifest.from_distribution("nseg-infer")  # the napari.manifest entry point
    assert installed.contributions.widgets[0].autogenerate


@pytest.fixture(scope="module")
def outputs(unet_bundle, tmp_path_factory):
    import tifffile

    from nseg_infer.run import Predictor, RunConfig

    d = tmp_path_factory.mktemp("napari")
    img, _ = synthetic_blobs((100, 130), 15, seed=4)
    tifffile.imwrite(d / "field.ome.tif", img, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.5,
                                                                   "PhysicalSizeY": 0.5})
    r = Predictor(unet_bundle, RunConfig(products="labels,geojson")).process_file(d / "field.ome.tif", d)
    assert r.ok, r.error
    return r


def test_viewer_opens_labels_with_outlines(outputs):
    pytest.importorskip("napari", reason="the napari extra is not installed")
    from napari.components import ViewerModel

    from nseg_infer.napari_plugin import get_reader

    labels_path, geojson_path = outputs.outputs
    assert get_reader(str(labels_path)) is not None and get_reader("scan.png") is None
    npe2.PluginManager.instance().discover()  # napari.Viewer does this on start; ViewerModel does not
    v = ViewerModel()
    v.open(str(labels_path), plugin="nseg-infer")
    assert [ly.name for ly in v.layers] == ["field nuclei", "field outlines"]
    lab, shapes = v.layers
    assert lab.data.max() == outputs.n_nuclei and tuple(lab.scale) == pytest.approx((0.5, 0.5))
    assert len(shapes.data) == outputs.n_nuclei and list(shapes.features["label"]) == list(range(1, outputs.n_nuclei + 1))
    # Outline vertices lie on the boundary of their own nucleus (napari's pixel-centre coordinates).
    poly = shapes.data[0]
    assert np.all(np.abs(poly.mean(axis=0) - np.argwhere(lab.data == 1).mean(axis=0)) < 1.5)
    v.open(str(geojson_path), plugin="nseg-infer")
    assert len(v.layers) == 3 and v.layers[-1].name.startswith("field outlines")
    assert len(v.layers[-1].data) == outputs.n_nuclei


def test_segment_command_on_an_image_layer(unet_bundle):
    pytest.importorskip("napari", reason="the napari extra is not installed")
    from napari.components import ViewerModel
    from napari.layers import Image

    from nseg_infer.napari_plugin import segment_layer

    img, _ = synthetic_blobs((90, 110), 12, seed=6)
    v = ViewerModel()
    layer = v.add_image(img, name="dapi", scale=(0.3, 0.3))
    data, meta, kind = segment_layer(layer, model=unet_bundle)
    v._add_layer_from_data(data, meta, kind)
    out = v.layers["dapi nuclei"]
    assert kind == "labels" and out.data.shape == img.shape and out.data.max() >= 10
    assert tuple(out.scale) == pytest.approx((0.3, 0.3)) and len(out.metadata["measurements"]) == out.data.max()
    stack = Image(np.stack([np.zeros_like(img), img]), name="two")
    with pytest.raises(ValueError, match="channel"):
        segment_layer(stack, model=unet_bundle)
    data2, _, _ = segment_layer(stack, model=unet_bundle, channel=1)
    np.testing.assert_array_equal(data2, data)
