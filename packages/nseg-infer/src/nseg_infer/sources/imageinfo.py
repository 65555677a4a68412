"""What an input file holds besides pixels: its axes, channel names and pixel size.

Microscope files are stacks (time, channel, z, plus vendor axes); nseg segments one 2-D plane.
`choose_planes` decides which plane is used, and refuses what cannot be decided for the user (a
z stack). Pixel sizes are read from the metadata users' software writes: OME-XML
(PhysicalSizeX/Y with unit), ImageJ (resolution tags + `unit=`), Aperio SVS (`MPP`) and plain
TIFF resolution tags in centimetres or inches. All sizes are in micrometres per pixel.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from nseg_data.errors import DataError

log = logging.getLogger(__name__)

# Micrometres per unit, for the unit spellings of OME-XML, ImageJ and vendor metadata.
UNITS_UM = {"µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
            "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6,
            "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
            "inch": 25400.0, "in": 25400.0}
# Screen and print defaults (72-300 dpi) mean "uncalibrated"; a microscope or slide scanner
# writes thousands to hundreds of thousands of dpi. Coarser than this is not a pixel size.
MAX_INCH_PIXEL_UM = 10.0


def choose_planes(path: Path, axes: str, sizes: tuple[int, ...]) -> tuple[dict[str, int], tuple[str, ...]]:
    """Index to use on every axis other than Y, X, C and S, and notes saying what was used.
    A z stack is refused: which plane (or projection) holds the nuclei is the user's call."""
    use: dict[str, int] = {}
    notes: list[str] = []
    for a, n in zip(axes, sizes, strict=True):
        if a in "YXCS":
            continue
        if a == "Z" and n > 1:
            raise DataError(path, f"a z stack of {n} planes ({_shape(axes, sizes)}): nseg segments 2-D images; "
                                  "save one plane or a maximum projection (Fiji: Image > Stacks > Z Project)")
        use[a] = 0
        if n > 1:
            what = "time points" if a == "T" else f"planes along axis {a}"
            notes.append(f"{n} {what} ({_shape(axes, sizes)}): using the first")
    return use, tuple(notes)


def _shape(axes: str, sizes: tuple[int, ...]) -> str:
    return "axes " + " ".join(f"{a}={n}" for a, n in zip(axes, sizes, strict=True))


def unit_um(unit: object) -> float | None:
    """Micrometres per `unit`, or None for pixels, blanks and unknown spellings."""
    if unit is None:
        return None
    u = str(unit).strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").lower()
    return UNITS_UM.get(u)


def _valid(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) and v > 0 else None


def _rational(tag) -> float | None:
    if tag is None:
        return None
    v = tag.value
    num, den = (v if isinstance(v, tuple) else (v, 1))
    return float(num) / float(den) if den and num else None


OME_NAMESPACE = "http://www.openmicroscopy.org/Schemas/OME/"


def check_ome(path: Path, tf) -> None:
    """Refuse a TIFF whose description announces OME-XML that is malformed. OME-XML says which
    planes are channels, z and time; when it does not parse, readers silently fall back to a
    plain stack, and the wrong plane would be segmented as if it were the nuclear channel. A DTD
    or entity declaration is refused too: OME-XML never has one, and entity expansion is how an
    XML file of a few bytes asks for gigabytes."""
    import xml.etree.ElementTree as ET

    try:
        desc = tf.pages.first.description if len(tf.pages) else ""
    except Exception:
        return  # no first page to describe: _tiff_planes reports the file
    if not desc or "<OME" not in desc[:4096] or OME_NAMESPACE not in desc[:4096]:
        return
    if "<!DOCTYPE" in desc or "<!ENTITY" in desc:
        raise DataError(path, "malformed OME-XML: it declares a DTD or entities, which OME-XML never has; refused")
    try:
        root = ET.fromstring(desc)
    except ET.ParseError as e:
        raise DataError(path, f"malformed OME-XML in the TIFF description ({e}): its channels, planes and pixel "
                              "size cannot be known; re-export the file") from e
    if not root.tag.endswith("}OME") or not any(el.tag.endswith("}Pixels") for el in root.iter()):
        raise DataError(path, "malformed OME-XML: no OME root with Image/Pixels; re-export the file")


def _ome_pixels(tf) -> dict:
    import tifffile

    try:
        image = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]
    except Exception:  # malformed OME-XML is the file's problem, not a reason to refuse its pixels
        return {}
    image = image[0] if isinstance(image, list) else image
    pixels = image.get("Pixels", {}) if isinstance(image, dict) else {}
    return pixels if isinstance(pixels, dict) else {}


def ome_channel_names(tf) -> tuple[str, ...]:
    if not tf.is_ome:
        return ()
    ch = _ome_pixels(tf).get("Channel", [])
    ch = ch if isinstance(ch, list) else [ch]
    return tuple(str(c.get("Name", "")) if isinstance(c, dict) else "" for c in ch)


def tiff_pixel_size(tf, page) -> tuple[float, float] | None:
    """(y, x) µm per pixel from a TIFF's metadata, or None when it does not say."""
    if tf.is_ome:
        px = _ome_pixels(tf)
        sx, sy = px.get("PhysicalSizeX"), px.get("PhysicalSizeY", px.get("PhysicalSizeX"))
        if sx is not None:
            ux = unit_um(px.get("PhysicalSizeXUnit", "µm"))
            uy = unit_um(px.get("PhysicalSizeYUnit", px.get("PhysicalSizeXUnit", "µm")))
            x = _valid(float(sx) * ux) if ux else None
            y = _valid(float(sy) * uy) if uy else None
            if x and y:
                return y, x
    xres = _rational(page.tags.get("XResolution"))
    yres = _rational(page.tags.get("YResolution")) or xres
    if tf.is_imagej:
        u = unit_um((tf.imagej_metadata or {}).get("unit"))
        if u and xres and yres:
            return u / yres, u / xres
    if tf.is_svs:
        from tifffile.tifffile import svs_description_metadata  # not re-exported at the top level

        try:
            mpp = _valid(float(svs_description_metadata(page.description)["MPP"]))
        except Exception:
            mpp = None
        if mpp:
            return mpp, mpp
    unit_tag = page.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF 6.0: inch when absent
    if xres and yres and unit in (2, 3):
        per = 25400.0 if unit == 2 else 1e4
        x, y = per / xres, per / yres
        if unit == 2 and max(x, y) > MAX_INCH_PIXEL_UM:
            return None
        return y, x
    return None
