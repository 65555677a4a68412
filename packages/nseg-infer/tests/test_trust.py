"""Files from elsewhere: bundle file names that leave the bundle, images whose headers claim absurd
sizes or tile counts, malformed OME-XML. Each is refused naming the file; a batch goes on."""

from __future__ import annotations

import json
import os
import struct

import imagecodecs
import numpy as np
import pytest
import tifffile
from infer_testkit import synthetic_blobs, write_bundle
from nseg_data.errors import DataError
from typer.testing import CliRunner

from nseg_infer.engine import plan
from nseg_infer.engine.bundle import BundleError, load_bundle
from nseg_infer.engine.predictor import Predictor, RunConfig
from nseg_infer.runners.cli import app
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import FileRunner
from nseg_infer.runners.files import run as run_files
from nseg_infer.sources import formats, imageio, tiff
from nseg_infer.sources.imageio import open_image

# -- bundles ----------------------------------------------------------------------------------------


@pytest.fixture()
def bdir(tmp_path):
    return write_bundle(tmp_path / "b")


def _set(bdir, **changes):
    meta_file = bdir / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta.update(changes)
    meta_file.write_text(json.dumps(meta))


def test_model_file_outside_the_bundle_is_refused(bdir, tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((bdir / "model.onnx").read_bytes())
    sha = json.loads((bdir / "metadata.json").read_text())["sha256"]
    for name, words in [("../outside.onnx", "leaves the bundle folder"), (str(outside), "absolute path"),
                        ("sub/../../outside.onnx", "leaves the bundle folder")]:
        _set(bdir, model_file=name, sha256=sha)
        with pytest.raises(BundleError, match=words) as e:
            load_bundle(bdir)
        assert str(bdir / "metadata.json") in str(e.value)
    # A symlink inside the folder that points out of it.
    (bdir / "link.onnx").symlink_to(outside)
    _set(bdir, model_file="link.onnx", sha256=sha)
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load_bundle(bdir)


def test_files_in_subfolders_and_links_within_the_bundle_load(bdir):
    (bdir / "sub").mkdir()
    os.replace(bdir / "model.onnx", bdir / "sub" / "model.onnx")
    _set(bdir, model_file="sub/model.onnx")
    assert load_bundle(bdir).model_path == bdir / "sub" / "model.onnx"
    (bdir / "alias.onnx").symlink_to(bdir / "sub" / "model.onnx")
    _set(bdir, model_file="alias.onnx")
    assert load_bundle(bdir).model_path.name == "alias.onnx"


@pytest.mark.parametrize("name", ["../evil.engine", "/tmp/evil.engine"])
def test_engine_names_outside_the_bundle_are_refused(bdir, name):
    _set(bdir, engines=[{"file": name, "precision": "fp16"}])
    with pytest.raises(BundleError, match="engines"):
        load_bundle(bdir)


def test_sha256_is_checked_by_default(bdir):
    with open(bdir / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(bdir)


# -- images -----------------------------------------------------------------------------------------


def _png(tmp_path, shape=(64, 64), name="ok.png"):
    p = tmp_path / name
    p.write_bytes(imagecodecs.png_encode(synthetic_blobs(shape, 4, seed=1)[0]))
    return p


def _forged_png(path, height, width):
    """A PNG signature and IHDR claiming (height, width), then nothing a decoder could use."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * 4 + b"\0" * 64)
    return path


def _forged_tiff(path, height, width, *, tile=None, n_segments=1):
    """A classic little-endian TIFF whose IFD claims (height, width), one segment of 64 bytes."""
    data_at = 8
    data = b"\0" * 64
    ifd_at = data_at + len(data)
    offsets_at = ifd_at + 2 + 13 * 12 + 4
    off = list(range(data_at, data_at + n_segments))
    cnt = [1] * n_segments
    arr_o = struct.pack(f"<{n_segments}I", *off)
    arr_c = struct.pack(f"<{n_segments}I", *cnt)
    o_val = offsets_at if n_segments > 1 else off[0]
    c_val = offsets_at + len(arr_o) if n_segments > 1 else cnt[0]
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (277, 3, 1, 1)]
    if tile is None:
        tags += [(273, 4, n_segments, o_val), (278, 4, 1, height), (279, 4, n_segments, c_val)]
    else:
        tags += [(322, 3, 1, tile), (323, 3, 1, tile), (324, 4, n_segments, o_val), (325, 4, n_segments, c_val)]
    tags.sort()
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags)
    ifd += b"\0" * (12 * (13 - len(tags))) + struct.pack("<I", 0)
    body = b"II*\0" + struct.pack("<I", ifd_at) + data + ifd
    assert len(body) == offsets_at
    path.write_bytes(body + (arr_o + arr_c if n_segments > 1 else b""))
    return path


def test_png_claiming_a_huge_size_is_refused_before_decoding(tmp_path, monkeypatch):
    decoded = []
    monkeypatch.setattr(imageio, "_decode_small", lambda p: decoded.append(p))
    bomb = _forged_png(tmp_path / "bomb.png", 200_000, 300_000)
    with pytest.raises(DataError, match="--max-pixels") as e:
        open_image(bomb)
    assert str(bomb) in str(e.value) and "200000 x 300000" in str(e.value)
    assert decoded == []


def test_max_pixels_applies_to_real_png_jpeg_and_tiff(tmp_path):
    png = _png(tmp_path)
    jpg = tmp_path / "ok.jpg"
    jpg.write_bytes(imagecodecs.jpeg8_encode(synthetic_blobs((48, 80), 4, seed=2)[0]))
    tif = tmp_path / "ok.tif"
    tifffile.imwrite(tif, np.zeros((40, 50), np.uint8))
    for p, (h, w) in [(png, (64, 64)), (jpg, (48, 80)), (tif, (40, 50))]:
        assert open_image(p, max_pixels=h * w).shape == (h, w)  # at the limit: accepted
        with pytest.raises(DataError, match=f"{h} x {w}") as e:
            open_image(p, max_pixels=h * w - 1)
        assert str(p) in str(e.value)


def test_jpeg_size_is_read_past_exif_segments(tmp_path):
    jpg = tmp_path / "exif.jpg"
    raw = imagecodecs.jpeg8_encode(np.zeros((33, 71), np.uint8))
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 5000) + b"Exif\0\0" + b"\0" * 4994
    jpg.write_bytes(raw[:2] + app1 + raw[2:])
    assert formats.jpeg_size(jpg) == (33, 71)
    (tmp_path / "nope.jpg").write_bytes(b"\xff\xd8\xff\xe1\x00")
    with pytest.raises(DataError, match=r"nope\.jpg"):
        formats.jpeg_size(tmp_path / "nope.jpg")


def test_tiff_claiming_a_huge_size_is_refused(tmp_path):
    big = _forged_tiff(tmp_path / "big.tif", 1_000_000, 1_000_000)
    with pytest.raises(DataError, match=r"1000000 x 1000000 = 1,000,000,000,000 pixels") as e:
        open_image(big)
    assert str(big) in str(e.value)


def test_absurd_tiff_tile_counts_are_refused(tmp_path, monkeypatch):
    # Too few tile offsets for the claimed size: a corrupt header, refused before any read.
    short = _forged_tiff(tmp_path / "short.tif", 64, 64, tile=16, n_segments=2)
    with pytest.raises(DataError, match="needs 16") as e:
        open_image(short, region_threshold_px=1)
    assert str(short) in str(e.value)
    # More segments than the limit (lowered here; the real one needs gigabytes of header).
    tiled = tmp_path / "tiled.tif"
    tifffile.imwrite(tiled, np.zeros((64, 64), np.uint8), tile=(16, 16))
    assert open_image(tiled, region_threshold_px=1).shape == (64, 64)
    monkeypatch.setattr(tiff, "MAX_SEGMENTS", 15)
    with pytest.raises(DataError, match="16 tiles or strips"):
        open_image(tiled, region_threshold_px=1)


def test_absurd_model_tile_grids_are_refused(unet_bundle, tmp_path, monkeypatch):
    p = _png(tmp_path, (300, 300))
    pred = Predictor(unet_bundle, RunConfig(device="cpu"))
    monkeypatch.setattr(plan, "MAX_TILES", 3)
    r = FileRunner(pred).process_file(p, tmp_path / "out")
    assert not r.ok and str(p) in r.error and "tiles, above the limit of 3" in r.error


def _ome(tmp_path, name, description):
    p = tmp_path / name
    tifffile.imwrite(p, np.zeros((2, 32, 32), np.uint8), description=description, metadata=None)
    return p


def test_malformed_ome_xml_is_refused(tmp_path):
    good = tmp_path / "good.ome.tif"
    tifffile.imwrite(good, np.zeros((2, 32, 32), np.uint8), ome=True, metadata={"axes": "CYX"})
    assert open_image(good).info.axes == "CYX"
    xml = tifffile.TiffFile(good).pages[0].description
    cut = _ome(tmp_path, "cut.ome.tif", xml.replace("</OME>", ""))
    with pytest.raises(DataError, match="malformed OME-XML") as e:
        open_image(cut)
    assert str(cut) in str(e.value)
    entity = xml.replace("<OME ", '<!DOCTYPE OME [<!ENTITY a "aaaa">]><OME ', 1)
    with pytest.raises(DataError, match="DTD or entities"):
        open_image(_ome(tmp_path, "entity.ome.tif", entity))


def test_batch_goes_on_past_refused_files_and_cli_option(unet_bundle, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    good = _png(d, name="good.png")
    bomb = _forged_png(d / "bomb.png", 100_000, 100_000)
    results = run_files([d], tmp_path / "out", runner=FileRunner(Predictor(unet_bundle, RunConfig(device="cpu"))))
    by = {r.input.name: r for r in results}
    assert by["good.png"].ok and not by["bomb.png"].ok and str(bomb) in by["bomb.png"].error
    # The command line's --max-pixels: the 64 x 64 image is refused below 4096 pixels, the batch goes on.
    res = CliRunner().invoke(app, ["run", str(good), str(bomb), "--out", str(tmp_path / "o2"), "--model",
                                   str(unet_bundle), "--device", "cpu", "--max-pixels", "4095"])
    assert res.exit_code == 1
    assert "0 of 2 images segmented" in res.output and "64 x 64 = 4,096 pixels" in res.output
    res = CliRunner().invoke(app, ["run", str(good), "--out", str(tmp_path / "o3"), "--model",
                                   str(unet_bundle), "--device", "cpu", "--max-pixels", "4096"])
    assert res.exit_code == 0, res.output


def test_file_config_validates_max_pixels():
    with pytest.raises(ValueError, match="max_pixels"):
        FileConfig(max_pixels=0)


def test_watch_records_a_refused_file_and_goes_on(unet_bundle, tmp_path):
    from nseg_infer.runners.watch.config import WatchConfig
    from nseg_infer.runners.watch.ledger import LEDGER_NAME, Ledger
    from nseg_infer.runners.watch.watcher import Watcher

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    _png(inp, name="good.png")
    bomb = _forged_png(inp / "bomb.png", 100_000, 100_000)
    w = Watcher(Predictor(unet_bundle, RunConfig(device="cpu")),
                WatchConfig(inp, out, settle=0.1, fail_after=0.2, poll=0.1, events=False, once=True))
    assert w.run() == 0
    with Ledger(out / LEDGER_NAME, create=False) as led:
        rows = {r.path: r for r in led.current()}
    assert rows[str(inp / "good.png")].state == "done"
    bad = rows[str(bomb)]
    assert bad.state == "failed" and str(bomb) in bad.error and "--max-pixels" in bad.error
