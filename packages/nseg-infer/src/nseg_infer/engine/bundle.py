"""Read and validate a model bundle (metadata.json + model.onnx [+ TensorRT engines]).

Every problem is reported as a `BundleError` naming the file, because the bundle is the one
thing a user hands the runtime besides images, and "KeyError: 'tiling'" helps nobody.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nseg_infer.engine.bioimageio_package import is_package, read_package
from nseg_infer.engine.bundle_files import BundleError, bundle_file, sha256_file
from nseg_infer.engine.preprocess import Normalization

FORMAT = "nseg-bundle/1"
KINDS = ("unet", "maskrcnn")
_REQUIRED = ("format", "kind", "model_file", "sha256", "inputs", "outputs", "preprocessing", "tiling",
             "postprocessing")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str = "float32"
    shape: tuple[Any, ...] = ()
    channels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("tensor name must be non-empty")


@dataclass(frozen=True)
class Preprocessing:
    channel_order: str = "RGB"
    layout: str = "NCHW"
    normalization: Normalization = field(default_factory=Normalization)
    size_divisor: int = 16
    resize: int | None = None  # the whole image resized to resize x resize before tiling (the seed's setup)

    def __post_init__(self) -> None:
        if self.resize is not None and self.resize < 1:
            raise ValueError(f"resize must be >= 1, got {self.resize}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.layout != "NCHW":
            raise ValueError(f"only NCHW layout is supported, got {self.layout!r}")
        if self.size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {self.size_divisor}")


@dataclass(frozen=True)
class TilingSpec:
    tile: int = 512
    halo: int = 32
    batch: int = 4

    def __post_init__(self) -> None:
        if self.tile < 1 or self.halo < 0 or self.batch < 1:
            raise ValueError(f"tiling needs tile >= 1, halo >= 0, batch >= 1; got {self}")
        if 2 * self.halo >= self.tile:
            raise ValueError(f"halo {self.halo} leaves no core in tile {self.tile}")


@dataclass(frozen=True)
class ScaleSpec:
    """The scale the model was trained at (metadata key `scale`, optional): the typical nucleus
    diameter in pixels and, when the training images had one, their pixel size in µm. None is
    unknown; the runtime then rescales only when told (`--diameter`). `min_nucleus_diameter_px`:
    the model was trained with every image whose nuclei are smaller enlarged to it, so the runtime
    measures each image's nuclei in a first pass and enlarges it alike (`runners.size`), unless the
    options set the scale."""

    nucleus_diameter_px: float | None = None
    pixel_size_um: float | None = None
    min_nucleus_diameter_px: float | None = None

    def __post_init__(self) -> None:
        for name in ("nucleus_diameter_px", "pixel_size_um", "min_nucleus_diameter_px"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"scale.{name} must be > 0, got {v}")


@dataclass(frozen=True)
class EngineSpec:
    file: str
    precision: str = "fp16"
    tensorrt: str = ""
    gpu: str = ""


@dataclass(frozen=True)
class Bundle:
    """A validated bundle. `postprocessing` is read-only: it is shared by every file of a batch."""

    path: Path
    kind: str
    model_path: Path
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: Preprocessing
    tiling: TilingSpec
    postprocessing: Mapping[str, Any]
    engines: tuple[EngineSpec, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False)
    scale: ScaleSpec = field(default_factory=ScaleSpec)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.inputs or not self.outputs:
            raise ValueError("a bundle needs at least one input and one output")

    def engine_paths(self) -> list[tuple[EngineSpec, Path]]:
        # Checked again here: an engine may be built into the folder after the bundle was loaded.
        return [(e, p) for e in self.engines if (p := bundle_file(self.path, e.file, "engines[].file")).is_file()]


def default_bundle_path() -> Path:
    """The bundle shipped inside the package, so `nseg-infer run` works right after install."""
    return Path(__file__).resolve().parent.parent / "assets" / "default"


# Bundles shipped inside the package, by the name `--model` accepts: the default UNet and the
# Mask R-CNN.
PACKAGED = ("default", "maskrcnn")


def packaged_bundle_path(name: str) -> Path:
    if name not in PACKAGED:
        raise ValueError(f"no packaged bundle named {name!r} (packaged: {', '.join(PACKAGED)})")
    return default_bundle_path().parent / name


def _tensor(meta_file: Path, key: str, d: Any) -> TensorSpec:
    if not isinstance(d, Mapping) or "name" not in d:
        raise BundleError(meta_file, f"each entry of '{key}' must be an object with a 'name'")
    return TensorSpec(name=str(d["name"]), dtype=str(d.get("dtype", "float32")),
                      shape=tuple(d.get("shape", ())), channels=tuple(d.get("channels", ())))


def parse_metadata(meta: Any, bundle_dir: Path, *, verify_sha256: bool = True) -> Bundle:
    meta_file = bundle_dir / "metadata.json"
    if not isinstance(meta, Mapping):
        raise BundleError(meta_file, "top level must be a JSON object")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise BundleError(meta_file, f"missing required key(s): {', '.join(missing)}")
    if meta["format"] != FORMAT:
        raise BundleError(meta_file, f"unsupported format {meta['format']!r} (expected {FORMAT!r})")
    for key in ("inputs", "outputs"):
        if not isinstance(meta[key], list) or not meta[key]:
            raise BundleError(meta_file, f"'{key}' must be a non-empty list")
    for key in ("preprocessing", "tiling", "postprocessing"):
        if not isinstance(meta[key], Mapping):
            raise BundleError(meta_file, f"'{key}' must be an object")
    model_path = bundle_file(bundle_dir, meta["model_file"], "model_file")
    if not model_path.is_file():
        raise BundleError(model_path, f"model file named in {meta_file} does not exist")
    if verify_sha256:
        actual = sha256_file(model_path)
        if actual != str(meta["sha256"]).lower():
            raise BundleError(model_path, f"sha256 mismatch: metadata.json says {meta['sha256']}, file is {actual}"
                              " (corrupted or replaced model)")
    try:
        pre = dict(meta["preprocessing"])
        nd = dict(pre.get("normalization", {}))
        kind = str(nd.pop("kind", "percentile"))
        preprocessing = Preprocessing(
            channel_order=str(pre.get("channel_order", "RGB")), layout=str(pre.get("layout", "NCHW")),
            normalization=Normalization(**{k: float(v) for k, v in nd.items()}, kind=kind),
            size_divisor=int(pre.get("size_divisor", 16)),
            resize=None if pre.get("resize") is None else int(pre["resize"]))
        t = meta["tiling"]
        tiling = TilingSpec(tile=int(t.get("tile", 512)), halo=int(t.get("halo", 32)), batch=int(t.get("batch", 4)))
        engines = tuple(EngineSpec(file=str(e["file"]), precision=str(e.get("precision", "")),
                                   tensorrt=str(e.get("tensorrt", "")), gpu=str(e.get("gpu", "")))
                        for e in meta.get("engines", []) or [])
        for e in engines:
            bundle_file(bundle_dir, e.file, "engines[].file")
        sc = meta.get("scale") or {}
        if not isinstance(sc, Mapping):
            raise ValueError("'scale' must be an object")
        scale = ScaleSpec(*(None if sc.get(k) is None else float(sc[k])
                            for k in ("nucleus_diameter_px", "pixel_size_um", "min_nucleus_diameter_px")))
        if scale.min_nucleus_diameter_px is not None and preprocessing.resize is not None:
            raise ValueError("'scale.min_nucleus_diameter_px' and 'preprocessing.resize' both set the scale the model sees")
        return Bundle(
            path=bundle_dir, kind=str(meta["kind"]), model_path=model_path, sha256=str(meta["sha256"]),
            inputs=tuple(_tensor(meta_file, "inputs", d) for d in meta["inputs"]),
            outputs=tuple(_tensor(meta_file, "outputs", d) for d in meta["outputs"]),
            preprocessing=preprocessing, tiling=tiling,
            postprocessing=MappingProxyType(dict(meta["postprocessing"])), engines=engines,
            metadata=MappingProxyType(dict(meta)), scale=scale)
    except BundleError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise BundleError(meta_file, f"invalid metadata: {e}") from e


def load_bundle(path: str | Path | None = None, *, verify_sha256: bool = True,
                cache_dir: str | Path | None = None) -> Bundle:
    """Load a bundle directory (or its metadata.json); None means the packaged default, and the
    names in PACKAGED ('default', 'maskrcnn') the bundles shipped in the package. A bioimage.io
    package's zip is unpacked under `cache_dir` (default: the user's cache folder)."""
    if path is None:
        p = default_bundle_path()
        if not (p / "metadata.json").is_file():
            raise BundleError(p, "no default model is installed with this copy of nseg-infer; "
                              "pass --model BUNDLE_DIR (a folder made by nseg-export)")
    else:
        p = Path(path)
        # A packaged bundle's name, unless a folder of that name is right here.
        if str(path) in PACKAGED and not p.exists():
            p = packaged_bundle_path(str(path))
    if is_package(p):  # a bioimage.io package made by `nseg-export bioimageio` (zip or folder)
        return _load_package(p, verify_sha256=verify_sha256, cache_dir=cache_dir)
    if p.is_file() and p.name == "metadata.json":
        p = p.parent
    meta_file = p / "metadata.json"
    if not p.is_dir():
        raise BundleError(p, "model bundle not found (expected a folder with metadata.json and model.onnx)")
    if not meta_file.is_file():
        raise BundleError(meta_file, "missing: a bundle folder must contain metadata.json")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(meta_file, f"not valid JSON: {e}") from e
    return parse_metadata(meta, p, verify_sha256=verify_sha256)


def _load_package(path: Path, *, verify_sha256: bool, cache_dir: str | Path | None) -> Bundle:
    """The bundle inside a bioimage.io package (zip, folder, or its rdf file): the metadata in its
    rdf's `config.nseg.bundle`, its files in the package's folder (a zip's unpacked copy)."""
    meta, folder, package = read_package(path, cache_dir=cache_dir)
    try:
        bundle = parse_metadata(meta, folder, verify_sha256=verify_sha256)
    except BundleError as e:
        # parse_metadata names metadata.json; in a package the metadata is the rdf's config.nseg.bundle.
        raise BundleError(package, f"config.nseg.bundle: {e.problem}") from e
    # The package, not the cache folder, is what users and cluster workers name (workers load it
    # again from this path).
    return dataclasses.replace(bundle, path=package)
