"""A bioimage.io model package (model spec 0.5) from an nseg UNet bundle.

    bundle (model.onnx + metadata.json)
      -> rdf.yaml: tensors with axes and channel names, the percentile normalisation as
         `scale_range`, ONNX weights, authors, licence, citations, tags, training data, metrics,
         and the bundle's own metadata under `config: {nseg: ...}` (what `nseg-infer run --model
         MODEL.zip` needs for the tiling and the instance step)
      -> test tensors: a crop of a real image and the bundle's ONNX output for it
      -> cover.png: that image (and a second one) with the bundle's labels outlined
      -> README.md: what the outputs are and how nseg makes labels from them (the watershed,
         which the spec cannot express)

The rdf is written as plain YAML, so exporting needs neither bioimageio.spec nor torch; when the
optional extra is installed (`nseg-export[bioimageio]`) the package is validated with
bioimageio.spec, and `bioimageio.core`'s `test_model` can run it (`--test`).
A Mask R-CNN bundle is refused: its outputs (a variable number of boxes, scores and box-space
masks pasted into the image) are not tensors the spec can describe.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The model spec version written; bioimageio.spec 0.5.x reads and upgrades any 0.5 format.
FORMAT_VERSION = "0.5.4"
PACKAGE_FORMAT = "nseg-bioimageio/1"
RDF_NAME = "rdf.yaml"
REPO = Path(__file__).resolve().parents[4]
# The repository's sample (DSB 2018 locked-split images, CC0): a fluorescence image for the test
# tensor and the cover, an H&E one for the cover's second panel.
SAMPLE = REPO / "examples" / "sample" / "stage1_train"
DEFAULT_IMAGES = ("693bc64581275f04fc456da74f031d583733360a1f6032fa38b3fbf592ff4352",
                  "0bf33d3db4282d918ec3da7112d0bf0427d4eafe74b3ee0bb419770eefe8d7d6")
TEST_SIDE = 256          # test tensor side (a multiple of every size divisor nseg uses)
COVER_SIDE = 256         # each cover panel; the cover is 2:1, as bioimage.io shows covers

CITATIONS = (
    {"text": "Caicedo JC et al. Nucleus segmentation across imaging experiments: the 2018 Data Science "
             "Bowl. Nature Methods 16, 1247-1253 (2019)", "doi": "10.1038/s41592-019-0612-7"},
    {"text": "BBBC038v1: Kaggle 2018 Data Science Bowl, Broad Bioimage Benchmark Collection (CC0)",
     "url": "https://bbbc.broadinstitute.org/BBBC038"},
)
TAGS = ("nuclei", "instance-segmentation", "semantic-segmentation", "2d", "unet", "onnx", "fluorescence-light-microscopy",
        "brightfield", "histology", "dsb2018", "nseg")


class BioimageioExportError(ValueError):
    """A bundle or image that cannot become a package; the message names the file."""


@dataclass(frozen=True)
class PackageOptions:
    """`name`/`description`: the package's title and summary (default: from the bundle);
    `authors`: names; `images`: real images for the test tensor (the first) and the cover (up to
    two), default the repository's DSB sample; `version`: the package's own version."""

    name: str | None = None
    description: str | None = None
    authors: tuple[str, ...] = ("the nseg authors",)
    license: str = "BSD-3-Clause"
    images: tuple[Path, ...] = ()
    version: str = "0.1.0"
    git_repo: str | None = None
    extra_tags: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.authors or any(not a.strip() for a in self.authors):
            raise ValueError("authors must be non-empty names")
        if self.name is not None and not self.name.strip():
            raise ValueError("name must not be empty")
        if len(self.images) > 2:
            raise ValueError(f"give at most two images (test tensor + cover), got {len(self.images)}")


@dataclass(frozen=True)
class PackageResult:
    path: Path
    rdf: dict
    files: tuple[str, ...]
    validation: str   # what bioimageio.spec said, or why it did not run


def _refuse_unsupported(bundle) -> None:
    meta_file = bundle.path / "metadata.json"
    if bundle.kind == "maskrcnn":
        raise BioimageioExportError(
            f"{meta_file}: a Mask R-CNN bundle cannot be a bioimage.io model: its graph returns boxes, scores and "
            "masks in box coordinates, which nseg pastes into the image and merges across tiles outside the graph, "
            "and the bioimage.io model spec has no step that does this. Export a UNet bundle instead "
            "(e.g. the default model).")
    norm = bundle.preprocessing.normalization
    if norm.kind not in ("percentile", "scale_range"):
        raise BioimageioExportError(f"{meta_file}: normalisation {norm.kind!r} has no bioimage.io equivalent")
    if bundle.preprocessing.channel_order not in ("RGB", "BGR"):
        raise BioimageioExportError(f"{meta_file}: channel order {bundle.preprocessing.channel_order!r}")


def _onnx_opset(model_path: Path) -> int:
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise BioimageioExportError(f"{model_path}: no default-domain opset in the ONNX model")


def _default_images() -> tuple[Path, ...]:
    paths = tuple(SAMPLE / i / "images" / f"{i}.png" for i in DEFAULT_IMAGES)
    if not all(p.is_file() for p in paths):
        raise BioimageioExportError(f"{SAMPLE}: the repository's sample images are not here; give real images "
                                    "with --image (the first makes the test tensor, up to two the cover)")
    return paths


def _read_rgb(path: Path) -> np.ndarray:
    from nseg_data.errors import DataError
    from nseg_infer.engine.preprocess import as_rgb
    from nseg_infer.sources.imageio import read_image

    try:
        a = read_image(path)
    except DataError:
        raise
    except (OSError, ValueError) as e:  # a decoder's own error: say which file
        raise BioimageioExportError(f"{path}: cannot read the image: {e}") from e
    if a.ndim == 3 and a.shape[2] > 4:
        raise BioimageioExportError(f"{path}: {a.shape[2]} channels; give a gray or RGB image")
    return as_rgb(a, source=str(path))


def _crop(a: np.ndarray, side: int, path: Path) -> np.ndarray:
    h, w = a.shape[:2]
    if h < side or w < side:
        raise BioimageioExportError(f"{path}: {h}x{w} px; the test tensor needs at least {side}x{side}")
    y, x = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(a[y:y + side, x:x + side])


def model_input(bundle, rgb: np.ndarray) -> np.ndarray:
    """The 1x3xHxW float32 tensor bioimage.io's preprocessing gets: the raw pixel values in the
    channel order the model takes (the normalisation is the package's `scale_range`/`scale_linear`)."""
    a = rgb[..., ::-1] if bundle.preprocessing.channel_order == "BGR" else rgb
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None].astype(np.float32))


def normalised(bundle, raw: np.ndarray) -> np.ndarray:
    """`raw` (1x3xHxW) normalised as the package's preprocessing says; for percentile bundles the
    same statistics nseg takes (whole image, all channels), with bioimage.io's eps."""
    norm = bundle.preprocessing.normalization
    if norm.kind == "scale_range":
        return raw / np.float32(255.0)
    lo, hi = np.percentile(raw.astype(np.float64), (norm.low_percentile, norm.high_percentile))
    return ((raw - lo) / (hi - lo + 1e-6)).astype(np.float32)


def _cover(bundle, images: Sequence[np.ndarray]) -> bytes:
    """Square crops of the images with the bundle's nuclei outlined in yellow, side by side (2:1);
    with one image, the image beside its outlines."""
    from nseg_infer.engine.predictor import Predictor, RunConfig
    from nseg_infer.regions import ArraySource
    from nseg_infer.runners.prepare import model_input
    from nseg_infer.sinks.overlay import CONTOUR_RGB, boundaries, display_rgb
    from PIL import Image

    predictor = Predictor(bundle, RunConfig(device="cpu"))
    panels = []
    for rgb in images:
        inp = model_input(predictor.bundle, ArraySource(rgb))  # a bundle's `resize`, as `nseg-infer run` applies it
        pred = predictor.predict(inp.source)
        plain = display_rgb(rgb, *pred.norm)
        outlined = plain.copy()
        outlined[boundaries(np.pad(inp.to_input(pred.labels)[0], 1, mode="edge"))] = CONTOUR_RGB
        panels.extend([plain, outlined] if len(images) == 1 else [outlined])
    cover = Image.new("RGB", (2 * COVER_SIDE, COVER_SIDE))
    for i, p in enumerate(panels):
        cover.paste(Image.fromarray(p).resize((COVER_SIDE, COVER_SIDE), Image.Resampling.LANCZOS), (i * COVER_SIDE, 0))
    buf = io.BytesIO()
    cover.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _square_crop(a: np.ndarray) -> np.ndarray:
    s = min(a.shape[:2])
    y, x = (a.shape[0] - s) // 2, (a.shape[1] - s) // 2
    return np.ascontiguousarray(a[y:y + s, x:x + s])


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _tif(a: np.ndarray) -> bytes:
    """A sample tensor as the website shows it: one TIFF, channel first (the tensor's axes minus batch)."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, a, photometric="minisblack", metadata={"axes": "CYX"})
    return buf.getvalue()


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _space_min(bundle) -> int:
    """Smallest input side: a multiple of the size divisor that leaves a core inside the halo."""
    step = bundle.preprocessing.size_divisor
    return step * max(1, math.ceil((2 * bundle.tiling.halo + step) / step))


def _preprocessing(bundle) -> list[dict]:
    norm = bundle.preprocessing.normalization
    if norm.kind == "scale_range":  # nseg's fixed scaling: 8-bit pixel values / 255
        return [{"id": "scale_linear", "kwargs": {"gain": 1.0 / 255.0, "offset": 0.0}}]
    # Percentiles over the whole image, all channels together (H&E keeps its colour balance).
    return [{"id": "scale_range", "kwargs": {"axes": ["channel", "y", "x"], "min_percentile": norm.low_percentile,
                                             "max_percentile": norm.high_percentile}}]


def _channel_names(bundle) -> list[str]:
    rgb = ["red", "green", "blue"]
    return rgb[::-1] if bundle.preprocessing.channel_order == "BGR" else rgb


def _post_text(bundle) -> str:
    pp = dict(bundle.postprocessing)
    kind = pp.get("kind", "unet_watershed")
    if kind == "components":
        return (f"Labels are the 4-connected components of `foreground > {pp.get('fg_threshold', 0.5)}`, "
                f"components under {pp.get('min_size', 0)} pixels dropped.")
    seeds = (f"the h-maxima of the distance map of height {pp['seed_h']} whose peak exceeds "
             f"{pp.get('seed_threshold', 0.5)}" if pp.get("seed_h") else
             f"the 8-connected regions where `distance > {pp.get('seed_threshold', 0.5)}` inside the mask")
    text = (f"1. Mask: `foreground > {pp.get('fg_threshold', 0.5)}`.\n"
            f"2. Seeds: {seeds}; seeds under {pp.get('min_seed_area', 3)} pixels are dropped.\n"
            "3. Marker-controlled watershed of `-distance` from the seeds, restricted to the mask "
            "(`skimage.segmentation.watershed(-distance, markers=seeds, mask=mask)`).\n"
            "4. Mask regions no seed reached become nuclei of their own (8-connected).\n"
            f"5. Nuclei under {pp.get('min_size', 12)} pixels are removed and the rest numbered 1..n.")
    by_mod = pp.get("by_modality") or {}
    if by_mod:
        rows = "; ".join(f"{m}: " + ", ".join(f"`{k}` {v}" for k, v in d.items()) for m, d in by_mod.items())
        text += ("\n\nPer image type, inferred from the image (coloured: histology; light background: "
                 f"brightfield; else fluorescence), these parameters replace the ones above: {rows}.")
    return text


def _readme(bundle, name: str, description: str, metrics: dict, images: Sequence[Path]) -> str:
    t = bundle.tiling
    norm = bundle.preprocessing.normalization
    norm_text = (f"the {norm.low_percentile:g} and {norm.high_percentile:g} percentiles of the whole image, "
                 "all channels together, are mapped to 0 and 1 (not clipped)" if norm.kind == "percentile" else
                 "8-bit pixel values divided by 255")
    outs = list(bundle.outputs[0].channels) or ["foreground"]
    m_rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, int | float))
    scale = bundle.scale.nucleus_diameter_px
    resize = bundle.preprocessing.resize
    parts = [
        f"# {name}\n\n{description}\n",
        "## Input\n\n`image`: one 2-D image as 3 channels "
        f"({', '.join(_channel_names(bundle))}), batch x channel x y x x. A gray image (one fluorescence "
        "channel) is repeated into all three; a colour image (H&E, brightfield) goes in as it is. "
        f"Preprocessing: {norm_text}. Sides must be multiples of {bundle.preprocessing.size_divisor}."
        + (f" The typical nucleus is {scale:g} px across in the training data; images whose nuclei are "
           "much larger or smaller segment best after resampling to that scale." if scale else "")
        + (f"\n\nThis model was trained on whole images resized to {resize} x {resize}: resize the "
           "normalised image to that size before the model and the labels back afterwards." if resize else ""),
        f"## Output\n\n`{bundle.outputs[0].name}`: {len(outs)} channels in [0, 1] at the input's size: "
        + ", ".join(f"`{c}`" for c in outs) + ". `foreground` is the probability that a pixel belongs to a "
        "nucleus; `distance` is each nucleus's distance to its own edge, normalised to 1 at its centre. "
        f"For large images, run tiles of {t.tile} px overlapping by {t.halo} px on each side and keep each "
        "tile's core (the output axes' halo).",
        "## From outputs to labels (the instance step)\n\nThe bioimage.io spec has no instance-segmentation "
        "step, so the package's outputs are probability maps. nseg makes one label per nucleus from them:\n\n"
        + _post_text(bundle)
        + "\n\nnseg does all of this (normalisation, tiling with blended overlaps, the instance step, "
        "measurements, OME-TIFF labels, QuPath GeoJSON) from the package itself:\n\n"
        "```bash\nnseg-infer run 'images/*.tif' --out results --model MODEL.zip   # nseg's torch-free runtime\n```\n\n"
        "The package's `config: nseg` section holds what it needs (nseg's bundle metadata).",
        "## Training data\n\nThe 2018 Data Science Bowl `stage1_train` images (BBBC038v1, CC0): fluorescence, "
        "brightfield and H&E nuclei, with the community's published label fixes, split by modality into "
        "train / validation / a locked test set that no model trained or tuned on."
        + "".join(f" Also trained on `{d['name']}` ({d.get('licence') or 'licence not recorded'}): {d.get('citation') or ''}"
                  for d in other_sources(bundle))
        + (f" Training splits sha256: `{bundle.metadata.get('training', {}).get('splits_sha256', '')}`."
           if bundle.metadata.get("training", {}).get("splits_sha256") else ""),
        "## Validation\n\nValidation metrics stored with the model (DSB score: mean precision over IoU "
        "thresholds 0.5-0.95; F1 at IoU 0.5 and 0.75; aggregated Jaccard index; panoptic quality; "
        "foreground Dice):\n\n| metric | value |\n|---|---:|\n" + m_rows if m_rows else
        "## Validation\n\nNo metrics are stored with this bundle.",
        "## Test data and cover\n\nThe test input is a crop of "
        + ", ".join(f"`{p.name}`" for p in images[:1])
        + "; its test output is this model's ONNX output for it. The cover shows "
        + " and ".join(f"`{p.name}`" for p in images) + " with the model's nuclei outlined.",
        "## Limitations\n\nTrained on the DSB 2018 images only; on very different nuclei sizes, stains "
        "or modalities expect lower accuracy. Brightfield is rare in the training data.",
        "## Citation\n\n" + "\n".join(f"- {c['text']}" + (f", doi:{c['doi']}" if "doi" in c else f", {c['url']}")
                                      for c in CITATIONS)
        + "".join(f"\n- {d['citation']}" for d in other_sources(bundle) if d.get("citation")),
    ]
    return "\n\n".join(parts) + "\n"


def other_sources(bundle) -> list[dict]:
    """Training sources beside DSB 2018 (a multi-source model), each with its licence and citation."""
    return [d for d in bundle.metadata.get("training", {}).get("data_sources") or [] if d.get("name") != "dsb2018"]


def citations(bundle) -> list[dict]:
    """The package's citations: DSB 2018's, and each other source's with the DOI its citation
    names (the spec wants a DOI or URL per entry; one without stays in the README's text only)."""
    out = [dict(c) for c in CITATIONS]
    for d in other_sources(bundle):
        doi = re.search(r"doi:\s*(10\.[^\s,;]+[^\s,;.])", d.get("citation") or "")
        if doi:
            out.append({"text": d["citation"], "doi": doi.group(1)})
    return out


def _metrics(bundle) -> dict[str, float]:
    return {k: v for k, v in (bundle.metadata.get("metrics") or {}).items() if isinstance(v, int | float)}


def _title(bundle, opts: PackageOptions) -> tuple[str, str]:
    name = opts.name or f"nseg UNet nuclei ({bundle.path.name})"
    description = opts.description or (
        "2-D nuclei segmentation for fluorescence, brightfield and H&E images: a UNet predicting nucleus "
        "foreground and a normalised distance map, from which a seeded watershed makes one label per nucleus. "
        "Trained on the 2018 Data Science Bowl data (BBBC038).")
    return name, description


def _rdf(bundle, opts: PackageOptions, *, name: str, description: str, opset: int, test_in_sha: str,
         test_out_sha: str, weights_sha: str, nseg_meta: dict) -> dict:
    out = bundle.outputs[0]
    out_channels = list(out.channels) or ["foreground"]
    step = bundle.preprocessing.size_divisor
    space_min = _space_min(bundle)
    in_id = bundle.inputs[0].name

    def space_in(axis: str) -> dict:
        return {"type": "space", "id": axis, "size": {"min": space_min, "step": step}}

    def space_out(axis: str) -> dict:
        return {"type": "space", "id": axis, "size": {"tensor_id": in_id, "axis_id": axis}, "halo": bundle.tiling.halo}

    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": name,
        "description": description,
        "version": opts.version,
        "authors": [{"name": a} for a in opts.authors],
        "license": opts.license,
        "cite": citations(bundle),
        "tags": list(dict.fromkeys((*TAGS, *opts.extra_tags))),
        "covers": ["cover.png"],
        "documentation": "README.md",
        **({"git_repo": opts.git_repo} if opts.git_repo else {}),
        "timestamp": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "inputs": [{
            "id": in_id,
            "description": "2-D image as 3 channels (a gray image repeated into all three), raw pixel values",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": _channel_names(bundle)},
                     space_in("y"), space_in("x")],
            "test_tensor": {"source": "test_input.npy", "sha256": test_in_sha},
            "sample_tensor": {"source": "sample_input.tif"},
            "data": {"type": "float32"},
            "preprocessing": _preprocessing(bundle),
        }],
        "outputs": [{
            "id": out.name,
            # (at most 128 characters)
            "description": "nucleus probability and normalised distance to the nucleus edge; "
                           "a seeded watershed makes labels (see README)",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": out_channels},
                     space_out("y"), space_out("x")],
            "test_tensor": {"source": "test_output.npy", "sha256": test_out_sha},
            "sample_tensor": {"source": "sample_output.tif"},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {"onnx": {"source": bundle.model_path.name, "sha256": weights_sha, "opset_version": opset,
                             "authors": [{"name": a} for a in opts.authors]}},
        "training_data": {
            "format_version": "0.3.0", "type": "dataset",
            "name": "DSB 2018 stage1_train (BBBC038v1)",
            "description": "Kaggle 2018 Data Science Bowl stage 1 training images and nucleus masks: fluorescence, "
                           "brightfield and H&E, with the community's published label fixes.",
            "authors": [{"name": "Broad Institute (Carpenter lab)"}],
            "cite": [dict(c) for c in CITATIONS],
            "license": "CC0-1.0",
            "source": "https://bbbc.broadinstitute.org/BBBC038",
            "documentation": "README.md",  # its "Training data" section
            "tags": ["nuclei", "dsb2018"],
        },
        "config": {
            "nseg": {"format": PACKAGE_FORMAT, "bundle": nseg_meta, "metrics": _metrics(bundle)},
        },
    }


def _yaml(rdf: dict) -> str:
    import yaml

    return yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True, width=110)


def build_package(bundle_path: str | Path | None, out: str | Path, opts: PackageOptions = PackageOptions()) -> PackageResult:
    """Write the package: `out` ending in .zip becomes a zip file, anything else a folder. Either
    is published whole (an atomic file, or a folder built beside `out` and renamed into place), so
    validation and users never see half a package; an existing package folder is replaced."""
    from nseg_data.atomic import atomic_dir, write_bytes_atomic
    from nseg_infer.engine.backends import create_backend
    from nseg_infer.engine.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    _refuse_unsupported(bundle)
    images = opts.images or _default_images()
    rgbs = [_read_rgb(Path(p)) for p in images]
    test_rgb = _crop(rgbs[0], TEST_SIDE, Path(images[0]))
    raw = model_input(bundle, test_rgb)
    backend = create_backend(bundle, "cpu")
    result = backend.run(normalised(bundle, raw))
    test_out = np.ascontiguousarray(result[bundle.outputs[0].name], np.float32)
    n_out = len(bundle.outputs[0].channels) or test_out.shape[1]
    test_out = np.ascontiguousarray(test_out[:, :n_out])
    weights = bundle.model_path.read_bytes()
    cover = _cover(bundle, [_square_crop(a) for a in rgbs])
    nseg_meta = json.loads(json.dumps(dict(bundle.metadata)))  # a plain, YAML-safe copy
    nseg_meta.pop("engines", None)   # TensorRT engines are per GPU and stay out of the package
    nseg_meta.pop("variants", None)
    nseg_meta["model_file"] = bundle.model_path.name
    name, description = _title(bundle, opts)
    readme = _readme(bundle, name, description, _metrics(bundle), [Path(p) for p in images])
    files = {
        bundle.model_path.name: weights,
        "test_input.npy": _npy(raw),
        "test_output.npy": _npy(test_out),
        "sample_input.tif": _tif(test_rgb.transpose(2, 0, 1)),
        "sample_output.tif": _tif(test_out[0]),
        "cover.png": cover,
        "README.md": readme.encode(),
    }
    rdf = _rdf(bundle, opts, name=name, description=description, opset=_onnx_opset(bundle.model_path),
               test_in_sha=_sha256(files["test_input.npy"]), test_out_sha=_sha256(files["test_output.npy"]),
               weights_sha=_sha256(weights), nseg_meta=nseg_meta)
    files[RDF_NAME] = _yaml(rdf).encode()
    out = Path(out)
    if out.suffix.lower() == ".zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for fname in (RDF_NAME, *sorted(set(files) - {RDF_NAME})):
                z.writestr(fname, files[fname])
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out, buf.getvalue())
    else:
        with atomic_dir(out, marker=RDF_NAME) as tmp:
            for fname, data in files.items():
                (tmp / fname).write_bytes(data)
    return PackageResult(out, rdf, tuple(files), validate(out))


def validate(package: str | Path) -> str:
    """bioimageio.spec's static validation of the package (format, files, hashes), offline; or
    why it did not run. Raises BioimageioExportError when the spec rejects the package."""
    try:
        import bioimageio.spec
        from bioimageio.spec import load_description
    except ImportError:
        return "not validated: bioimageio.spec is not installed (pip install 'nseg-export[bioimageio]')"
    descr = load_description(Path(package), perform_io_checks=True)
    summary = descr.validation_summary
    if summary.status == "failed":
        raise BioimageioExportError(f"{package}: bioimageio.spec {bioimageio.spec.__version__} rejects the package:\n"
                                    + summary.format())
    return f"valid bioimage.io model (bioimageio.spec {bioimageio.spec.__version__}, format {descr.format_version})"


def run_test_model(package: str | Path) -> tuple[bool, str]:
    """bioimageio.core's `test_model` on the package, on the CPU: (passed, its report)."""
    try:
        from bioimageio.core import test_model
    except ImportError as e:
        raise BioimageioExportError(f"{package}: testing needs bioimageio.core "
                                    "(pip install 'nseg-export[bioimageio]')") from e
    summary = test_model(str(package), devices=["cpu"])
    return summary.status == "passed", summary.format()
