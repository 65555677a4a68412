"""Run a bioimage.io model package made by `nseg-export bioimageio` (a MODEL.zip or its folder).

The package's `rdf.yaml` is read with plain YAML and its ONNX weights run on the runtime's own
ONNX Runtime backend: neither bioimageio.core nor torch is needed. What the spec cannot say (the
tiling, the watershed and its per-modality parameters, the training scale) is in the rdf's
`config: {nseg: {bundle: ...}}`, nseg's bundle metadata, so `nseg-infer run --model MODEL.zip`
gives exactly the labels of the bundle the package was made from.

A zip is unpacked once, because ONNX Runtime and TensorRT load models from files, into a folder
named by the zip's sha256 under `cache_dir`: an explicit argument of `read_package` (and
`engine.bundle.load_bundle`), by default the user's cache folder (`default_cache_dir`). Only the rdf and the
weights file are taken out of the zip.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nseg_data.atomic import WriteFailed, first_dir

from nseg_infer.engine.bundle_files import BundleError, sha256_file

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
PACKAGE_FORMAT = "nseg-bioimageio/1"


def _rdf_in_dir(folder: Path) -> Path | None:
    for name in RDF_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.bioimageio.yaml"))
    return found[0] if found else None


def is_package(path: Path) -> bool:
    """A zip file, an rdf file, or a folder with an rdf and no nseg `metadata.json`."""
    if path.is_file():
        return path.suffix.lower() == ".zip" or path.name in RDF_NAMES or path.name.endswith(".bioimageio.yaml")
    return path.is_dir() and not (path / "metadata.json").is_file() and _rdf_in_dir(path) is not None


def default_cache_dir() -> Path:
    """The user's cache folder for nseg: the platform's (the XDG base directory on Linux,
    `~/.cache` when unset) plus `nseg`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nseg"


def _read_rdf(rdf_path: Path, text: str) -> Mapping[str, Any]:
    import yaml

    try:
        rdf = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BundleError(rdf_path, f"not valid YAML: {e}") from e
    if not isinstance(rdf, Mapping):
        raise BundleError(rdf_path, "top level must be a mapping (a bioimage.io resource description)")
    if rdf.get("type") != "model":
        raise BundleError(rdf_path, f"a bioimage.io resource of type {rdf.get('type')!r}, not a model")
    return rdf


def nseg_section(rdf_path: Path, rdf: Mapping[str, Any]) -> dict:
    """The bundle metadata in `config: {nseg: {bundle: ...}}`, checked against the rdf's own
    weights and preprocessing, which a person may have edited."""
    nseg = (rdf.get("config") or {}).get("nseg") if isinstance(rdf.get("config"), Mapping) else None
    if not isinstance(nseg, Mapping) or not isinstance(nseg.get("bundle"), Mapping):
        raise BundleError(rdf_path, "this bioimage.io model has no 'config: nseg' section: nseg runs the packages "
                                    "`nseg-export bioimageio` makes, which carry its tiling and instance step there")
    if nseg.get("format") != PACKAGE_FORMAT:
        raise BundleError(rdf_path, f"config.nseg.format is {nseg.get('format')!r}; this nseg reads {PACKAGE_FORMAT!r}")
    meta = dict(nseg["bundle"])
    onnx = ((rdf.get("weights") or {}).get("onnx") or {}) if isinstance(rdf.get("weights"), Mapping) else {}
    if not isinstance(onnx, Mapping) or not onnx.get("source"):
        raise BundleError(rdf_path, "no ONNX weights (weights: onnx: source); nseg runs ONNX weights only")
    source = str(onnx["source"])
    if source != meta.get("model_file"):
        raise BundleError(rdf_path, f"weights.onnx.source {source!r} and config.nseg.bundle.model_file "
                                    f"{meta.get('model_file')!r} differ")
    if onnx.get("sha256") and str(onnx["sha256"]).lower() != str(meta.get("sha256", "")).lower():
        raise BundleError(rdf_path, "weights.onnx.sha256 and config.nseg.bundle.sha256 differ")
    _check_normalisation(rdf_path, rdf, meta)
    return meta


def _check_normalisation(rdf_path: Path, rdf: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    norm = ((meta.get("preprocessing") or {}).get("normalization") or {})
    if norm.get("kind", "percentile") != "percentile":
        return
    try:
        steps = rdf["inputs"][0].get("preprocessing") or []
        sr = next(s["kwargs"] for s in steps if s.get("id") == "scale_range")
    except (KeyError, IndexError, TypeError, AttributeError, StopIteration):
        raise BundleError(rdf_path, "inputs[0].preprocessing has no scale_range step, but the model was trained "
                                    "on percentile-normalised images") from None
    rdf_p = (float(sr.get("min_percentile", 0.0)), float(sr.get("max_percentile", 100.0)))
    own = (float(norm.get("low_percentile", 1.0)), float(norm.get("high_percentile", 99.8)))
    if rdf_p != own:
        raise BundleError(rdf_path, f"scale_range percentiles {rdf_p} differ from the model's own {own} "
                                    "(config.nseg.bundle.preprocessing.normalization)")


def _unpack(zip_path: Path, cache_dir: Path) -> Path:
    """The zip's rdf and weights in the cache folder (made once, atomically, by rename)."""
    digest = sha256_file(zip_path)
    target = Path(cache_dir) / "bioimageio" / digest[:32]
    if _rdf_in_dir(target) is not None:
        return target
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise BundleError(zip_path, f"not a readable zip file: {e}") from e
    with zf:
        names = set(zf.namelist())
        rdf_name = next((n for n in RDF_NAMES if n in names), None) or next(
            (n for n in sorted(names) if n.endswith(".bioimageio.yaml") and "/" not in n), None)
        if rdf_name is None:
            raise BundleError(zip_path, "not a bioimage.io package: no rdf.yaml (or bioimageio.yaml) at the zip's top level")
        rdf_text = zf.read(rdf_name).decode("utf-8", errors="replace")
        meta = nseg_section(zip_path / rdf_name, _read_rdf(zip_path / rdf_name, rdf_text))
        weights = str(meta.get("model_file", ""))
        if not weights or "/" in weights or "\\" in weights or weights in ("..", "."):
            raise BundleError(zip_path, f"weights file {weights!r} must be a plain file name at the zip's top level")
        if weights not in names:
            raise BundleError(zip_path, f"the weights file {weights!r} the rdf names is not in the zip")
        # Another process unpacking the same zip at once makes an identical folder: the first stays.
        try:
            with first_dir(target) as tmp:
                (tmp / rdf_name).write_text(rdf_text, encoding="utf-8")
                with zf.open(weights) as src, open(tmp / weights, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except WriteFailed as e:
            raise BundleError(zip_path, f"cannot unpack it: {e}") from e
    return target


def read_package(path: str | Path, *, cache_dir: str | Path | None = None) -> tuple[dict, Path, Path]:
    """(the bundle metadata in the rdf's `config.nseg.bundle`, the folder holding the weights, the
    package) for a bioimage.io package (zip, folder, or its rdf file), or a BundleError naming the
    package and what is wrong. A zip is unpacked under `cache_dir` (default: `default_cache_dir()`)."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() != ".zip":
        p = p.parent
    folder = _unpack(p, Path(cache_dir) if cache_dir is not None else default_cache_dir()) if p.is_file() else p
    rdf_path = _rdf_in_dir(folder)
    if rdf_path is None:
        raise BundleError(p, "not a bioimage.io package: no rdf.yaml (or bioimageio.yaml)")
    meta = nseg_section(rdf_path, _read_rdf(rdf_path, rdf_path.read_text(encoding="utf-8", errors="replace")))
    return meta, folder, p
