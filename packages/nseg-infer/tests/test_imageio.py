from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import tifffile
from nseg_data.errors import DataError
from PIL import Image

from nseg_infer.regions import Window
from nseg_infer.sources.imageio import open_image, read_image
from nseg_infer.sources.tiff import TiffRegionSource

RNG = np.random.default_rng(0)


def _img(dtype, channels, shape=(37, 53)):
    hi = np.iinfo(dtype).max
    full = (*shape, channels) if channels > 1 else shape
    return RNG.integers(0, hi, size=full, endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_and_tiff_round_trip(tmp_path, dtype, channels):
    a = _img(dtype, channels)
    png = tmp_path / "a.png"
    png.write_bytes(imagecodecs.png_encode(a))
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, a, photometric="rgb" if channels > 1 else "minisblack",
                     extrasamples=["unassalpha"] if channels == 4 else None)
    for p in (png, tif):
        b = read_image(p)
        assert b.dtype == dtype
        assert np.array_equal(b.reshape(a.shape), a)


def test_jpeg(tmp_path):
    a = np.full((20, 30, 3), 120, np.uint8)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    b = read_image(tmp_path / "a.jpg")
    assert b.shape[:2] == (20, 30) and abs(int(b.mean()) - 120) <= 2


def test_multipage_tiff_uses_first_page(tmp_path):
    stack = _img(np.uint16, 1, (4, 30, 40))
    tifffile.imwrite(tmp_path / "m.tif", stack)
    assert np.array_equal(read_image(tmp_path / "m.tif")[..., 0], stack[0])


def test_ome_tiff_first_plane(tmp_path):
    data = _img(np.uint16, 1, (2, 3, 30, 40))
    p = tmp_path / "x.ome.tif"
    tifffile.imwrite(p, data, metadata={"axes": "TCYX"}, ome=True)
    assert np.array_equal(read_image(p)[..., 0], data[0, 0])


def test_planar_rgb_tiff(tmp_path):
    data = _img(np.uint8, 1, (3, 30, 40))
    tifffile.imwrite(tmp_path / "p.tif", data, photometric="rgb", planarconfig="separate")
    assert np.array_equal(read_image(tmp_path / "p.tif"), np.moveaxis(data, 0, -1))


@pytest.mark.parametrize("layout", ["tiled", "stripped", "planar"])
def test_region_reader_decodes_only_needed_segments(tmp_path, monkeypatch, layout):
    h, w = 1000, 1300
    a = RNG.integers(0, 65535, size=(h, w, 3)).astype(np.uint16)
    p = tmp_path / "big.tif"
    if layout == "tiled":
        tifffile.imwrite(p, a, tile=(128, 128), bigtiff=True, compression="zlib", photometric="rgb")
    elif layout == "stripped":
        tifffile.imwrite(p, a, rowsperstrip=64, bigtiff=True, compression="zlib", photometric="rgb")
    else:
        tifffile.imwrite(p, np.moveaxis(a, -1, 0), tile=(128, 128), bigtiff=True, photometric="rgb",
                         planarconfig="separate")
    # Whole-page decoding is forbidden: the reader must work segment by segment.
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: pytest.fail("decoded the whole page"))
    decoded = []
    orig = tifffile.TiffPage.__dict__["decode"]  # a cached_property returning the decoder

    def counting(self):
        decode = orig.__get__(self, type(self))

        def wrapped(data, index, **kw):
            decoded.append(index)
            return decode(data, index, **kw)
        return wrapped

    monkeypatch.setattr(tifffile.TiffPage, "decode", property(counting))
    with open_image(p, region_threshold_px=1000) as src:
        assert isinstance(src, TiffRegionSource) and src.shape == (h, w)
        for win in (Window(0, 10, 0, 10), Window(300, 517, 250, 999), Window(900, 1000, 1200, 1300)):
            decoded.clear()
            assert np.array_equal(src.read(win), a[win.slices])
            assert 0 < len(decoded) < len(src._page.dataoffsets) / 3


def _bad(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_bad_files_raise_data_error_naming_the_file(tmp_path):
    good_png = imagecodecs.png_encode(_img(np.uint8, 3, (64, 64)))
    tif_path = tmp_path / "ok.tif"
    tifffile.imwrite(tif_path, _img(np.uint16, 1, (256, 256)), tile=(64, 64), compression="zlib")
    tif = tif_path.read_bytes()
    cases = {
        _bad(tmp_path, "empty.png", b""): "empty file",
        _bad(tmp_path, "cut.png", good_png[: len(good_png) // 2]): "truncated",
        _bad(tmp_path, "cut.tif", tif[: len(tif) // 2]): "truncated",
        _bad(tmp_path, "cut.jpg", b"\xff\xd8\xff\xe0garbage"): "truncated",
        _bad(tmp_path, "notes.txt", b"hello"): "unsupported format",
        tmp_path / "missing.png": "not found",
    }
    for path, problem in cases.items():
        with pytest.raises(DataError) as info:
            read_image(path)
        assert str(path) in str(info.value) and problem in str(info.value)


def test_truncated_big_tiff_fails_on_read_naming_the_file(tmp_path):
    p = tmp_path / "big.tif"
    tifffile.imwrite(p, _img(np.uint8, 1, (512, 512)), tile=(64, 64), compression="zlib", bigtiff=True)
    data = p.read_bytes()
    # Keep the header and the tail (where tifffile puts the IFD) but zero the tile data.
    p.write_bytes(data[:16] + b"\0" * (len(data) - 4096 - 16) + data[-4096:])
    with pytest.raises(DataError) as info, open_image(p, region_threshold_px=100) as src:
        src.read(Window(0, 512, 0, 512))
    assert str(p) in str(info.value)
