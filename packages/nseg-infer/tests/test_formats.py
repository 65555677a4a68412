"""Microscope files as the software users' files come from writes them: OME-TIFF, ImageJ
hyperstacks, pyramidal TIFF, Aperio SVS descriptions, CZI (written by Zeiss's pylibCZIrw) read
through bioio; channel choice and pixel size."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import tifffile
from nseg_data.errors import DataError

from nseg_infer.regions import Window
from nseg_infer.sources.channels import ChannelChoice, model_view
from nseg_infer.sources.imageio import open_image, read_image
from nseg_infer.sources.tiff import StackedSource, TiffRegionSource

RNG = np.random.default_rng(4)


def _planes(c: int, h: int = 40, w: int = 56) -> np.ndarray:
    return RNG.integers(0, 4000, (c, h, w), dtype=np.uint16)


def _ome(path, data, axes, px=0.325, names=None, **kw):
    meta = {"axes": axes, "PhysicalSizeX": px, "PhysicalSizeY": px, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm"}
    if names:
        meta["Channel"] = {"Name": names}
    tifffile.imwrite(path, data, ome=True, metadata=meta, **kw)
    return path


def test_ome_tiff_channels_names_and_pixel_size(tmp_path):
    data = _planes(3)
    p = _ome(tmp_path / "cells.ome.tif", data, "CYX", names=["FITC", "Hoechst 33342", "Cy5"])
    with open_image(p) as src:
        assert src.shape == (40, 56) and src.channels == 3
        assert np.array_equal(src.read_all(), np.moveaxis(data, 0, -1))
        assert src.info.channel_axis == "C" and src.info.channel_names == ("FITC", "Hoechst 33342", "Cy5")
        assert src.info.pixel_size_um == pytest.approx((0.325, 0.325))
        view = model_view(src)  # the one channel named like a nuclear stain
        assert view.channels == 1 and np.array_equal(view.read_all()[..., 0], data[1])
        rgb = model_view(src, ChannelChoice.parse(channels="2,0"))
        got = rgb.read(Window(5, 9, 3, 8))
        assert got.shape == (4, 5, 3) and np.array_equal(got[..., 0], data[2, 5:9, 3:8])
        assert np.array_equal(got[..., 1], data[0, 5:9, 3:8]) and not got[..., 2].any()


def test_ambiguous_channels_and_bad_index_name_file_and_axes(tmp_path):
    p = _ome(tmp_path / "five.ome.tif", _planes(5), "CYX", names=["a", "b", "c", "d", "e"])
    with open_image(p) as src:
        with pytest.raises(DataError) as e:
            model_view(src)
        msg = str(e.value)
        assert str(p) in msg and "5 channels" in msg and "axes CYX" in msg and "--channel N" in msg
        with pytest.raises(DataError) as e:
            model_view(src, ChannelChoice(channel=7))
        assert str(p) in str(e.value) and "channel 7 does not exist" in str(e.value) and "0 to 4" in str(e.value)
        assert np.array_equal(model_view(src, ChannelChoice(channel=4)).read_all()[..., 0], src.read_all()[..., 4])
    with pytest.raises(ValueError, match="not both"):
        ChannelChoice(channel=1, channels=(0,))
    with pytest.raises(ValueError, match="1 to 3"):
        ChannelChoice.parse(channels="0,1,2,3")


def test_time_series_uses_first_and_z_stack_is_refused(tmp_path):
    t = _ome(tmp_path / "movie.ome.tif", RNG.integers(0, 255, (3, 2, 20, 24), dtype=np.uint8), "TCYX")
    with open_image(t) as src:
        assert src.channels == 2 and any("3 time points" in n and "using the first" in n for n in src.info.notes)
        assert np.array_equal(src.read_all()[..., 1], tifffile.imread(t)[0, 1])
    z = _ome(tmp_path / "stack.ome.tif", RNG.integers(0, 255, (4, 20, 24), dtype=np.uint8), "ZYX")
    with pytest.raises(DataError) as e:
        read_image(z)
    assert str(z) in str(e.value) and "z stack of 4 planes" in str(e.value) and "Z Project" in str(e.value)


def test_imagej_hyperstack_and_resolution_units(tmp_path):
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, _planes(2), imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"axes": "CYX", "unit": "um"})
    with open_image(ij) as src:
        assert src.channels == 2 and src.info.channel_axis == "C"
        assert src.info.pixel_size_um == pytest.approx((0.65, 0.65))
    cm = tmp_path / "cm.tif"
    tifffile.imwrite(cm, _planes(1)[0], resolution=(1e4 / 0.5, 1e4 / 0.25), resolutionunit="CENTIMETER")
    assert open_image(cm).info.pixel_size_um == pytest.approx((0.25, 0.5))
    dpi = tmp_path / "screen.tif"  # 72 dpi is an editor's default, not a calibration
    tifffile.imwrite(dpi, _planes(1)[0], resolution=(72, 72), resolutionunit="INCH")
    assert open_image(dpi).info.pixel_size_um is None
    assert open_image(tmp_path / "cm.tif").info.channel_axis == ""


def _pyramid(path, base: np.ndarray, description: str | None = None, **kw) -> None:
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(base, tile=(64, 64), subifds=2, compression="zlib", description=description, **kw)
        for f in (2, 4):
            tw.write(base[::f, ::f], tile=(64, 64), subfiletype=1, compression="zlib")


def test_pyramidal_tiff_reads_level_zero_region_by_region(tmp_path, monkeypatch):
    base = RNG.integers(0, 255, (300, 410, 3), dtype=np.uint8)
    p = tmp_path / "slide.tif"
    _pyramid(p, base, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: pytest.fail("decoded the whole page"))
    with open_image(p, region_threshold_px=1000) as src:
        assert isinstance(src, TiffRegionSource) and src.shape == (300, 410) and src.channels == 3
        assert np.array_equal(src.read(Window(100, 170, 200, 333)), base[100:170, 200:333])
        assert src.info.pixel_size_um == pytest.approx((0.5, 0.5)) and model_view(src) is src


def test_svs_mpp_is_the_pixel_size(tmp_path):
    base = RNG.integers(0, 255, (128, 192, 3), dtype=np.uint8)
    p = tmp_path / "slide.svs.tif"
    _pyramid(p, base, "Aperio Image Library v12.0.15\r\n192x128 [0,0 192x128] (64x64) JPEG/RGB Q=70"
                      "|AppMag = 20|MPP = 0.4990", photometric="rgb")
    with open_image(p) as src:
        assert src.info.pixel_size_um == pytest.approx((0.499, 0.499))
        assert np.array_equal(src.read_all(), base)


def test_large_multichannel_ome_reads_only_the_chosen_plane(tmp_path):
    data = _planes(3, 200, 260)
    p = _ome(tmp_path / "big.ome.tif", data, "CYX", tile=(64, 64), compression="zlib")
    with open_image(p, region_threshold_px=1000) as src:
        assert isinstance(src, StackedSource) and src.channels == 3
        view = model_view(src, ChannelChoice(channel=2))
        calls = []
        for i, plane in enumerate(src._planes):
            orig = plane.read
            plane.read = lambda w, i=i, orig=orig: calls.append(i) or orig(w)
        assert np.array_equal(view.read(Window(10, 90, 30, 200))[..., 0], data[2, 10:90, 30:200])
        assert calls == [2]


def _write_czi(path, planes: np.ndarray, names: dict[int, str], px_m: float) -> None:
    pyczi = pytest.importorskip("pylibCZIrw.czi", reason="pylibCZIrw (installed with bioio-czi) writes the CZI")
    with pyczi.create_czi(str(path)) as w:
        for c, plane in enumerate(planes):
            w.write(data=plane, plane={"C": c, "T": 0, "Z": 0})
        w.write_metadata(document_name="nseg test", channel_names=names, scale_x=px_m, scale_y=px_m)


def test_czi_written_by_zeiss_library_reads_through_bioio(tmp_path):
    pytest.importorskip("bioio", reason="the formats extra (bioio) is not installed")
    pytest.importorskip("bioio_czi", reason="bioio-czi is not installed")
    data = _planes(2, 48, 64)
    p = tmp_path / "zeiss.czi"
    _write_czi(p, data, {0: "EGFP", 1: "DAPI"}, 0.325e-6)
    with open_image(p) as src:
        assert src.shape == (48, 64) and src.channels == 2
        assert src.info.channel_names == ("EGFP", "DAPI") and src.info.pixel_size_um == pytest.approx((0.325, 0.325))
        assert np.array_equal(model_view(src).read_all()[..., 0], data[1])


def test_bioio_path_agrees_with_tifffile_on_ome_tiff(tmp_path):
    pytest.importorskip("bioio_ome_tiff", reason="bioio-ome-tiff (formats extra) is not installed")
    from nseg_infer.sources.vendor import open_vendor

    data = _planes(3)
    p = _ome(tmp_path / "same.ome.tif", data, "CYX", px=0.4, names=["a", "DAPI", "c"])
    with open_vendor(p, 1 << 40) as b, open_image(p) as t:
        assert np.array_equal(b.read_all(), t.read_all())
        assert b.info.channel_names == t.info.channel_names and b.info.pixel_size_um == pytest.approx(t.info.pixel_size_um)
    with open_vendor(p, 100) as region:  # window reads of the lazy (dask) planes
        assert np.array_equal(region.read(Window(3, 11, 7, 30)), np.moveaxis(data, 0, -1)[3:11, 7:30])


def test_unreadable_or_unsupported_vendor_files_name_file_and_extra(tmp_path, monkeypatch):
    bad = tmp_path / "broken.czi"
    bad.write_bytes(b"ZISRAWFILE" + b"\0" * 300)
    if _has("bioio"):
        with pytest.raises(DataError) as e:
            read_image(bad)
        assert str(bad) in str(e.value) and "nseg-infer[formats]" in str(e.value)
    real_import = builtins.__import__

    def no_bioio(name, *a, **k):
        if name == "bioio" or name.startswith("bioio."):
            raise ImportError("No module named 'bioio'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_bioio)
    with pytest.raises(DataError) as e:
        read_image(bad)
    assert str(bad) in str(e.value) and "pip install 'nseg-infer[formats]'" in str(e.value)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
