"""Outputs as Fiji, QuPath, napari and spreadsheets read them: calibrated OME labels (pyramid for
large images), µm and per-channel columns, QuPath GeoJSON with UUIDs, ImageJ ROI sets, OME-Zarr
labels, --products, and the sinks that write them."""

from __future__ import annotations

import csv
import errno
import gzip
import io
import json
import os
import sys
import uuid

import numpy as np
import pytest
import tifffile
from infer_testkit import synthetic_blobs, write_labels_tiff
from nseg_data.atomic import WriteFailed
from typer.testing import CliRunner

from nseg_infer.engine.predictor import Predictor, RunConfig
from nseg_infer.engine.tiling import block_grid
from nseg_infer.regions import ArraySource
from nseg_infer.runners.cli import app
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import FileRunner
from nseg_infer.sinks import labelstiff
from nseg_infer.sinks.base import BlockData, LabelledImage
from nseg_infer.sinks.measure import COLUMNS, UM_COLUMNS
from nseg_infer.sinks.omezarr import array_path, open_labels
from nseg_infer.sinks.outputs import PRODUCTS, parse_products
from nseg_infer.sinks.table import CsvSink
from nseg_infer.sources.channels import ChannelChoice
from nseg_infer.sources.imageinfo import tiff_pixel_size

PX = 0.5


def _shoelace(ring) -> float:
    xs, ys = np.asarray(ring, np.float64).T
    return 0.5 * abs(float(np.sum(xs[:-1] * ys[1:] - xs[1:] * ys[:-1])))


@pytest.fixture(scope="module")
def stained(tmp_path_factory):
    """A two-channel OME-TIFF as a microscope exports it: noise in channel 0, nuclei in 'DAPI'."""
    d = tmp_path_factory.mktemp("stained")
    img, _ = synthetic_blobs((180, 220), 40, seed=11)
    noise = np.random.default_rng(2).integers(0, 500, img.shape).astype(np.uint16)
    data = np.stack([noise, img.astype(np.uint16) * 100])
    p = d / "well A1.ome.tif"
    tifffile.imwrite(p, data, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": PX, "PhysicalSizeY": PX,
                                                  "PhysicalSizeXUnit": "µm", "Channel": {"Name": ["GFP", "DAPI"]}})
    return p, data


@pytest.fixture(scope="module")
def products(unet_bundle, stained, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    # Every product but the OME-Zarr labels (the dask extra; tested below): outputs[0..5].
    r = FileRunner(Predictor(unet_bundle), FileConfig(products=PRODUCTS[:-1])).process_file(stained[0], out)
    assert r.ok, r.error
    return r


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_calibrated_multichannel_table(products, stained):
    rows = _rows(products.outputs[1])
    cols = tuple(rows[0])
    assert cols == (*COLUMNS, *UM_COLUMNS, "mean_intensity_ch0", "mean_intensity_ch1")
    assert len(rows) == products.n_nuclei >= 35 and {r["image"] for r in rows} == {"well A1"}
    _, data = stained
    labels = tifffile.imread(products.outputs[0])
    for r in rows[:5]:
        m = labels == int(r["label"])
        assert float(r["area_um2"]) == pytest.approx(int(r["area"]) * PX * PX, abs=1e-3)
        assert float(r["centroid_x_um"]) == pytest.approx(float(r["centroid_x"]) * PX, abs=1e-3)
        assert float(r["perimeter_um"]) == pytest.approx(float(r["perimeter"]) * PX, abs=1e-3)
        assert float(r["mean_intensity_ch0"]) == pytest.approx(data[0][m].mean(), abs=1e-3)
        # The model saw DAPI alone, so the main intensity column is DAPI's.
        assert float(r["mean_intensity"]) == pytest.approx(float(r["mean_intensity_ch1"]), abs=1e-3)


def test_labels_are_ome_tiff_with_the_input_pixel_size(products):
    with tifffile.TiffFile(products.outputs[0]) as tf:
        assert tf.is_ome and tiff_pixel_size(tf, tf.pages[0]) == pytest.approx((PX, PX))
        assert tf.series[0].dtype == np.uint16


def test_pyramid_for_large_labels(tmp_path, monkeypatch):
    monkeypatch.setattr(labelstiff, "PYRAMID_MIN_SIDE", 300)
    monkeypatch.setattr(labelstiff, "PYRAMID_SMALLEST", 100)
    lab = np.zeros((520, 610), np.uint32)
    lab[10:300, 20:400] = 3
    lab[301:515, 5:600] = 70000
    p = write_labels_tiff(tmp_path / "big.labels.tif", lab, 70000, tiled=False, pixel_size_um=(0.25, 0.25))
    with tifffile.TiffFile(p) as tf:
        levels = tf.series[0].levels
        assert [lv.shape for lv in levels] == [(520, 610), (260, 305), (130, 153), (65, 77)]
        assert np.array_equal(levels[0].asarray(), lab) and np.array_equal(levels[2].asarray(), lab[::4, ::4])
        assert tf.pages[0].is_tiled and tiff_pixel_size(tf, tf.pages[0]) == pytest.approx((0.25, 0.25))
    assert labelstiff.pyramid_levels(200, 299) == 0


def test_geojson_for_qupath(products, unet_bundle, stained, tmp_path):
    gj = json.loads(products.outputs[3].read_text())
    feats = gj["features"]
    rows = {int(r["label"]): r for r in _rows(products.outputs[1])}
    ids = [f["id"] for f in feats]
    assert len(set(ids)) == len(feats) == len(rows)
    assert all(uuid.UUID(i).version == 5 for i in ids)
    errors = []
    for f in feats:
        props = f["properties"]
        row = rows[props["label"]]
        m = props["measurements"]
        assert set(m) == set(row) - {"image"} and m["area"] == int(row["area"])
        assert m["area_um2"] == pytest.approx(float(row["area_um2"]))
        # A polygon through pixel-edge midpoints cuts each corner: at most half a pixel along the outline.
        diff = _shoelace(f["geometry"]["coordinates"][0]) - int(row["area"])
        assert abs(diff) <= 0.5 * float(row["perimeter"]) + 1
        errors.append(abs(diff) / int(row["area"]))
    assert np.mean(errors) < 0.1
    with gzip.open(products.outputs[4], "rt") as f:
        assert json.load(f) == gj
    again = FileRunner(Predictor(unet_bundle)).process_file(stained[0], tmp_path)  # a rerun: the same ids
    assert [f["id"] for f in json.loads(again.outputs[3].read_text())["features"]] == ids


def test_roi_set_reads_back_in_roifile(products):
    roifile = pytest.importorskip("roifile")
    rois = roifile.roiread(products.outputs[5])
    rows = {r["label"]: r for r in _rows(products.outputs[1])}
    assert sorted(r.name for r in rois) == sorted(rows) and len(rois) == products.n_nuclei
    for roi in rois[:10]:
        assert roi.roitype == roifile.ROI_TYPE.POLYGON
        pts = roi.coordinates()
        area = _shoelace(np.vstack([pts, pts[:1]]))
        assert abs(area - int(rows[roi.name]["area"])) <= 0.5 * float(rows[roi.name]["perimeter"]) + 1


def test_products_choice(unet_bundle, stained, tmp_path):
    r = FileRunner(Predictor(unet_bundle), FileConfig(products=("rois", "labels"))).process_file(stained[0], tmp_path)
    assert [p.name for p in r.outputs] == ["well A1.labels.tif", "well A1.rois.zip"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["well A1.labels.tif", "well A1.rois.zip"]
    assert r.summary_row()["labels"].endswith("well A1.labels.tif") and r.n_nuclei > 30
    only = FileRunner(Predictor(unet_bundle), FileConfig(products="overlay")).process_file(stained[0], tmp_path / "o")
    assert [p.name for p in only.outputs] == ["well A1.overlay.png"] and only.summary_row()["labels"] == ""
    assert only.n_nuclei == r.n_nuclei
    assert parse_products("geojson, labels") == ("labels", "geojson")
    assert ChannelChoice.parse(channels="1,0").channels == (1, 0)
    assert FileConfig(products="rois").products == ("rois",)
    with pytest.raises(ValueError, match="channels must be"):
        ChannelChoice.parse(channels="dapi")
    with pytest.raises(ValueError, match="unknown product 'shapes'"):
        parse_products("labels,shapes")
    res = CliRunner().invoke(app, ["run", str(stained[0]), "--out", str(tmp_path / "x"), "--model", str(unet_bundle),
                                   "--products", "labels,tables"])
    assert res.exit_code == 2 and "unknown product 'tables'" in res.output


def test_bad_channel_and_unreadable_vendor_file_do_not_stop_the_batch(unet_bundle, stained, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    img, _ = synthetic_blobs((120, 150), 20, seed=2)
    tifffile.imwrite(d / "plain.tif", img)
    five = d / "five.ome.tif"
    tifffile.imwrite(five, np.repeat(img[None], 5, axis=0), ome=True, metadata={"axes": "CYX"})
    (d / "broken.czi").write_bytes(b"not a czi at all" * 20)
    res = CliRunner().invoke(app, ["run", str(d / "plain.tif"), str(five), str(d / "broken.czi"), "--out",
                                   str(tmp_path / "out"), "--model", str(unet_bundle)])
    assert res.exit_code == 1, res.output
    assert "1 of 3 images segmented" in res.output and "2 failed" in res.output
    assert str(five) in res.output and "5 channels" in res.output and "axes CYX" in res.output
    assert str(d / "broken.czi") in res.output and "nseg-infer[formats]" in res.output
    bad = CliRunner().invoke(app, ["run", str(five), str(stained[0]), "--channel", "3", "--out",
                                   str(tmp_path / "ch"), "--model", str(unet_bundle), "--pixel-size", "0.2"])
    # channel 3 exists in the 5-channel file but not in the 2-channel one: that one fails, alone
    assert bad.exit_code == 1 and "1 of 2 images segmented" in bad.output
    assert str(stained[0]) in bad.output and "channel 3 does not exist" in bad.output
    rows = _rows(tmp_path / "ch" / "five.csv")
    assert float(rows[0]["area_um2"]) == pytest.approx(int(rows[0]["area"]) * 0.04, abs=1e-3)


def test_zarr_labels_are_the_tiff_labels_as_napari_reads_them(unet_bundle, stained, tmp_path):
    pytest.importorskip("zarr", reason="needs the dask extra: pip install 'nseg-infer[dask]'")
    # Blocks smaller than the image, so the store is written block by block into several chunks.
    cfg = RunConfig(block=96, margin=32)
    for _ in range(2):  # the second run replaces the store
        files = FileConfig(products="zarr,labels", block=96)
        r = FileRunner(Predictor(unet_bundle, cfg), files).process_file(stained[0], tmp_path)
        assert r.ok, r.error
    assert [p.name for p in r.outputs] == ["well A1.labels.tif", "well A1.ome.zarr"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["well A1.labels.tif", "well A1.ome.zarr"]  # no temp folders
    z = open_labels(array_path(r.outputs[1]))
    assert z.chunks == (96, 96) and z.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(z), tifffile.imread(r.outputs[0]))
    assert r.n_nuclei == len(np.unique(np.asarray(z))) - 1 >= 30
    reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    nodes = [n for n in reader.Reader(parse_url(str(r.outputs[1])))()
             if any(type(s).__name__ == "Label" for s in n.specs)]
    assert len(nodes) == 1
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), np.asarray(z))
    ms = nodes[0].metadata
    assert [a["unit"] for a in ms["axes"]] == ["micrometer", "micrometer"]
    assert ms["coordinateTransformations"][0] == [{"type": "scale", "scale": [PX, PX]}]


def test_zarr_without_the_dask_extra_names_it(unet_bundle, stained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr now raises ImportError
    r = FileRunner(Predictor(unet_bundle), FileConfig(products="labels,zarr")).process_file(stained[0], tmp_path)
    assert not r.ok and str(stained[0]) in r.error and "pip install 'nseg-infer[dask]'" in r.error
    assert list(tmp_path.iterdir()) == []  # the labels TIFF was not published either
    res = CliRunner().invoke(app, ["run", str(stained[0]), "--out", str(tmp_path / "x"), "--model", str(unet_bundle),
                                   "--products", "labels,zarr"])
    assert res.exit_code == 2 and "nseg-infer[dask]" in res.output and not (tmp_path / "x").exists()


class _FullDisk(io.RawIOBase):
    def write(self, b) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_sink_publishes_only_when_closed_and_names_its_file_when_a_write_fails(tmp_path):
    img, _ = synthetic_blobs((64, 64), 5, seed=3)
    lab = (img > 100).astype(np.uint32)
    image = LabelledImage("a", lab, 1, ArraySource(img), (0.0, 255.0))
    block = BlockData(image, block_grid(64, 64, 64, 0)[0], polygons=False)
    with pytest.raises(RuntimeError), CsvSink.open(tmp_path / "a.csv", image) as sink:
        sink.add_block(block)
        raise RuntimeError("the image failed mid-way")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp file
    with CsvSink.open(tmp_path / "a.csv", image) as sink:
        sink.add_block(block)
        sink.fh = _FullDisk()
        with pytest.raises(WriteFailed, match=r"a\.csv: not written: No space left on device"):
            sink.add_block(block)
    assert list(tmp_path.iterdir()) == []
    with CsvSink.open(tmp_path / "a.csv", image) as sink:
        sink.add_block(block)
        assert sink.close() == (tmp_path / "a.csv",)
    assert (tmp_path / "a.csv").read_text().splitlines()[1].startswith("a,1,")
    with pytest.raises(ValueError, match="labels of shape"):
        LabelledImage("a", lab[:10], 1, ArraySource(img), (0.0, 255.0))
