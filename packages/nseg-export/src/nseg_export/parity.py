"""Numerical parity between a checkpoint and its bundle, on inputs the export never saw.

Parity is the runtime's own `Predictor`, built from the bundle's metadata.json, run twice with
two backends (torch on the checkpoint, ONNX Runtime on the bundle; or ONNX Runtime and the
runtime's TensorRT backend), on images of several tiles with halos: the path users run. Two
levels, both must hold:
- raw outputs: element-wise `|test - ref| <= atol + rtol * |ref|` (numpy's allclose rule), with
  the largest absolute and relative errors reported: the blended UNet field over the whole image,
  or each tile's detections; plus random tensors straight into the graph;
- final instances: F1 at IoU 0.5 between the two label images per image, and equal instance
  counts on most images.

Both sides read the same metadata, so `check_metadata` separately holds the bundle's
normalisation and thresholds to the checkpoint's config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from nseg_data.paths import recorded_path

# FP32 ONNX Runtime vs torch: torchvision's own ONNX export tests use rtol 1e-3, atol 1e-5.
# FP16 / TensorRT: fp16 keeps ~3 significant digits per op and errors accumulate over a deep
# network, so probabilities are held to 2e-2 absolute; INT8 to 1e-1. The watershed turns a 1e-3 change
# of a pixel sitting at a threshold into a split or merged nucleus, so reduced precision is held to
# instance F1 >= 0.95 per image and equal counts on half the images (INT8: 0.9); FP32 to 0.99 and 80%.


@dataclass(frozen=True)
class Tolerance:
    name: str
    rtol: float
    atol: float
    min_f1: float = 0.99
    # "equal instance counts on most images"
    min_equal_count_fraction: float = 0.8
    # Mask R-CNN box coordinates are in pixels, not probabilities: their absolute tolerance is in pixels.
    box_atol: float = 1e-3


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance("fp32", rtol=1e-3, atol=1e-5, box_atol=1e-3),
    "fp16": Tolerance("fp16", rtol=1e-2, atol=2e-2, min_f1=0.95, min_equal_count_fraction=0.5, box_atol=1.0),
    "trt-fp32": Tolerance("trt-fp32", rtol=1e-3, atol=1e-4, box_atol=1e-2),
    "trt-fp16": Tolerance("trt-fp16", rtol=1e-2, atol=2e-2, min_f1=0.95, min_equal_count_fraction=0.5,
                          box_atol=1.0),
    # OpenVINO against ONNX Runtime fp32: trusted only with the same nuclei on every image.
    "openvino-fp32": Tolerance("openvino-fp32", rtol=1e-3, atol=1e-4, min_f1=1.0, min_equal_count_fraction=1.0),
    "openvino-bf16": Tolerance("openvino-bf16", rtol=5e-2, atol=5e-2, min_f1=1.0, min_equal_count_fraction=1.0),
    "trt-int8": Tolerance("trt-int8", rtol=5e-2, atol=1e-1, min_f1=0.9, min_equal_count_fraction=0.5,
                          box_atol=4.0),
}

# Random tiles for the UNet (H, W); odd sizes exercise the padding to the size divisor.
UNET_TILE_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (256, 320), (512, 512), (75, 131))


class ParityError(RuntimeError):
    pass


@dataclass
class TensorCheck:
    case: str
    output: str
    shape: list[int]
    max_abs: float
    max_rel: float
    violations: int
    passed: bool
    note: str = ""


@dataclass
class InstanceCheck:
    case: str
    n_ref: int
    n_test: int
    f1: float
    passed: bool


@dataclass
class TargetReport:
    target: str  # e.g. "onnxruntime:fp32 vs torch"
    tolerance: Tolerance
    tensors: list[TensorCheck] = field(default_factory=list)
    instances: list[InstanceCheck] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def equal_count_fraction(self) -> float:
        if not self.instances:
            return 1.0
        return sum(c.n_ref == c.n_test for c in self.instances) / len(self.instances)

    @property
    def passed(self) -> bool:
        return (not self.errors and bool(self.tensors) and all(t.passed for t in self.tensors)
                and all(i.passed for i in self.instances)
                and self.equal_count_fraction >= self.tolerance.min_equal_count_fraction)

    def failures(self) -> list[str]:
        out = list(self.errors)
        tol = self.tolerance
        out += [f"{t.case}/{t.output}: max abs {t.max_abs:.3g}, max rel {t.max_rel:.3g}, {t.violations} elements "
                f"outside atol {tol.atol:g} + rtol {tol.rtol:g}" + (f" ({t.note})" if t.note else "")
                for t in self.tensors if not t.passed]
        out += [f"{i.case}: instance F1@0.5 {i.f1:.4f} < {tol.min_f1} ({i.n_ref} vs {i.n_test} instances)"
                for i in self.instances if not i.passed]
        if self.equal_count_fraction < tol.min_equal_count_fraction:
            out.append(f"equal instance counts on only {self.equal_count_fraction:.0%} of images "
                       f"(need {tol.min_equal_count_fraction:.0%})")
        return out

    def summary(self) -> dict[str, Any]:
        f1 = [i.f1 for i in self.instances]
        return {
            "max_abs": max((t.max_abs for t in self.tensors), default=None),
            "max_rel": max((t.max_rel for t in self.tensors), default=None),
            "tensor_checks": len(self.tensors),
            "instance_checks": len(self.instances),
            "min_f1": min(f1) if f1 else None,
            "mean_f1": float(np.mean(f1)) if f1 else None,
            "equal_count_fraction": self.equal_count_fraction,
        }

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "passed": self.passed, "tolerance": asdict(self.tolerance),
                "summary": self.summary(), "failures": self.failures(),
                "tensors": [asdict(t) for t in self.tensors], "instances": [asdict(i) for i in self.instances],
                "errors": self.errors}


@dataclass
class ParityReport:
    checkpoint: str
    bundle: str
    kind: str = ""
    targets: list[TargetReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.errors and bool(self.targets) and all(t.passed for t in self.targets)

    def failures(self) -> list[str]:
        return list(self.errors) + [f"[{t.target}] {f}" for t in self.targets for f in t.failures()]

    def to_json(self) -> dict[str, Any]:
        return {"format": "nseg-parity/1", "passed": self.passed, "checkpoint": self.checkpoint,
                "bundle": self.bundle, "kind": self.kind, "cases": self.cases, "errors": self.errors,
                "failures": self.failures(), "targets": [t.to_json() for t in self.targets]}

    def write(self, path: Path) -> Path:
        from nseg_export.metadata import write_json_atomic

        return write_json_atomic(Path(path), _finite(self.to_json()))


def _finite(obj: Any) -> Any:
    # JSON has no NaN/inf; a non-finite error must still be visible in the report.
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------- comparisons


def compare_arrays(case: str, output: str, ref: np.ndarray, test: np.ndarray, *, rtol: float, atol: float,
                   note: str = "") -> TensorCheck:
    ref = np.asarray(ref, np.float64)
    test = np.asarray(test, np.float64)
    if ref.shape != test.shape:
        return TensorCheck(case, output, list(ref.shape), math.inf, math.inf, -1, False,
                           f"shape {list(test.shape)} != reference {list(ref.shape)}")
    if ref.size == 0:
        return TensorCheck(case, output, list(ref.shape), 0.0, 0.0, 0, True, note or "empty")
    if not np.isfinite(test).all():
        return TensorCheck(case, output, list(ref.shape), math.inf, math.inf, int((~np.isfinite(test)).sum()),
                           False, "non-finite values in the runtime output")
    diff = np.abs(test - ref)
    # Relative to |ref| but not below atol, so values that are ~0 on both sides do not report 1e30.
    rel = diff / np.maximum(np.abs(ref), max(atol, 1e-12))
    bad = diff > atol + rtol * np.abs(ref)
    return TensorCheck(case, output, list(ref.shape), float(diff.max()), float(rel.max()), int(bad.sum()),
                       not bad.any(), note)


def compare_instances(case: str, ref: np.ndarray, test: np.ndarray, min_f1: float) -> InstanceCheck:
    from nseg_data.metrics import match

    m = match(ref, test, 0.5)
    n_ref, n_test = m.tp + m.fn, m.tp + m.fp
    return InstanceCheck(case, int(n_ref), int(n_test), float(m.f1), bool(m.f1 >= min_f1))


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, 4)[:, None, :]
    b = b.reshape(-1, 4)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def compare_detections(case: str, ref: dict[str, np.ndarray], test: dict[str, np.ndarray], tol: Tolerance,
                       graph_score_threshold: float) -> list[TensorCheck]:
    """Detections are a set, not a tensor: pair them by box IoU, then compare the pairs element-wise.

    A detection without a partner is excused only when its score sits within tolerance of the graph's
    score threshold (the other side legitimately dropped it); any other one fails the check.
    """
    from scipy.optimize import linear_sum_assignment

    rb, tb = np.asarray(ref["boxes"]).reshape(-1, 4), np.asarray(test["boxes"]).reshape(-1, 4)
    rs, ts = np.asarray(ref["scores"]).reshape(-1), np.asarray(test["scores"]).reshape(-1)
    pairs_r = pairs_t = np.zeros(0, np.int64)
    if len(rb) and len(tb):
        iou = _box_iou(rb, tb)
        r, c = linear_sum_assignment(-iou)
        ok = iou[r, c] > 0.5
        pairs_r, pairs_t = r[ok], c[ok]
    band = tol.atol + tol.rtol * graph_score_threshold + 1e-6
    unmatched_r = np.setdiff1d(np.arange(len(rb)), pairs_r)
    unmatched_t = np.setdiff1d(np.arange(len(tb)), pairs_t)
    strays = [float(s) for s in np.concatenate([rs[unmatched_r], ts[unmatched_t]])
              if abs(float(s) - graph_score_threshold) > band]
    note = f"{len(rb)} vs {len(tb)} detections, {len(pairs_r)} paired"
    checks = [TensorCheck(case, "detections", [len(rb)], 0.0, 0.0, len(strays), not strays,
                          note + (f"; unpaired scores {strays[:5]}" if strays else ""))]
    checks.append(compare_arrays(case, "boxes", rb[pairs_r], tb[pairs_t], rtol=tol.rtol, atol=tol.box_atol))
    checks.append(compare_arrays(case, "scores", rs[pairs_r], ts[pairs_t], rtol=tol.rtol, atol=tol.atol))
    checks.append(compare_arrays(case, "masks", np.asarray(ref["masks"])[pairs_r], np.asarray(test["masks"])[pairs_t],
                                 rtol=tol.rtol, atol=tol.atol))
    return checks


# ---------------------------------------------------------------- inputs


def blob_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """uint8 HxWx3 bright blobs on a dark background: nucleus-like structure, so instance checks see instances."""
    from scipy import ndimage as ndi

    f = ndi.gaussian_filter(rng.standard_normal((h, w)), sigma=max(2.0, min(h, w) / 40))
    f = (f - f.mean()) / (f.std() + 1e-9)
    img = np.clip(40 + 150 * (f > 0.8) + 20 * f + rng.normal(0, 6, (h, w)), 0, 255).astype(np.uint8)
    tint = np.array([1.0, 0.85, 0.95])  # not grey, so a channel-order mistake changes the input
    return np.clip(img[..., None] * tint, 0, 255).astype(np.uint8)


def real_images(data_dir: Path | None, max_images: int) -> list[tuple[str, np.ndarray]]:
    """Up to `max_images` images of a dataset in any form nseg-data reads, spread evenly over its ids."""
    if data_dir is None or max_images <= 0:
        return []
    from nseg_data.dataset import open_dataset

    res = open_dataset(Path(data_dir), require_labels=False) if Path(data_dir).exists() else None
    if res is None or not res.samples:
        why = "does not exist" if res is None else "has no readable images"
        raise ParityError(f"{data_dir}: data folder {why}")
    samples = sorted(res.samples, key=lambda s: s.id)
    idx = np.unique(np.linspace(0, len(samples) - 1, min(max_images, len(samples))).round().astype(int))
    return [(f"data:{samples[i].id[:16]}", samples[i].image) for i in idx]


def _pad(x: np.ndarray, divisor: int) -> np.ndarray:
    """HxWxC zero-padded at bottom/right to multiples of divisor (a graph input shape)."""
    h, w = x.shape[:2]
    return np.pad(x, ((0, (-h) % divisor), (0, (-w) % divisor), (0, 0)))


# ---------------------------------------------------------------- cases


@dataclass
class Cases:
    images: list[tuple[str, np.ndarray]]  # uint8 HxWx3 through the whole Predictor
    tensors: list[tuple[str, np.ndarray]]  # float32 NCHW straight into the graph

    def names(self) -> list[str]:
        return [n for n, _ in self.images] + [n for n, _ in self.tensors]


def unet_cases(data_dir: Path | None, max_images: int, seed: int, divisor: int, tile: int) -> Cases:
    rng = np.random.default_rng(seed)
    images = real_images(data_dir, max_images)
    # Several tiles with halos (and an odd size), as well as images smaller than a tile.
    sizes = [*UNET_TILE_SIZES, (tile + tile // 2 + 3, 2 * tile - 37)]
    images += [(f"blobs:{h}x{w}", blob_image(rng, h, w)) for h, w in sizes]
    tensors = []
    for i, (h, w) in enumerate(UNET_TILE_SIZES):
        n = 2 if i % 2 else 1  # batch > 1 too: a batch axis traced as a constant would fail here
        x = rng.normal(0.3, 0.5, (n, h, w, 3)).astype(np.float32)
        x = np.stack([_pad(xi, divisor) for xi in x])
        tensors.append((f"random:{n}x{x.shape[1]}x{x.shape[2]}", np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    return Cases(images, tensors)


def maskrcnn_cases(data_dir: Path | None, max_images: int, seed: int, tile: int) -> Cases:
    rng = np.random.default_rng(seed)
    # Blank first, then a normal image on the same session: a zero-detection run must not poison the next.
    images = [("blank", np.full((tile, tile, 3), 30, np.uint8)), ("blobs:after-blank", blob_image(rng, tile, tile)),
              *real_images(data_dir, max_images), ("blobs:small", blob_image(rng, tile // 2, tile // 2 + 7)),
              (f"blobs:{tile + tile // 2}x{2 * tile - 40}", blob_image(rng, tile + tile // 2, 2 * tile - 40))]
    tensors = [(f"random:1x{tile}x{tile}", rng.uniform(0, 1, (1, 3, tile, tile)).astype(np.float32))]
    return Cases(images, tensors)


def cases_for(bundle: Any, data_dir: Path | None, max_images: int, seed: int) -> Cases:
    if bundle.kind == "unet":
        return unet_cases(data_dir, max_images, seed, bundle.preprocessing.size_divisor, bundle.tiling.tile)
    return maskrcnn_cases(data_dir, max_images, seed, bundle.tiling.tile)


# ---------------------------------------------------------------- the driver


def runtime_outputs(predictor: Any, image: np.ndarray) -> tuple[Any, np.ndarray]:
    """One model pass of `predictor` on `image` as `nseg-infer run` makes it (the bundle's whole-image
    `resize` applied by the Source decorator): (what the model gave: a UNet's fields per instance
    block, or a detector's raw tile detections; the labels at the image's size: the instance step
    on those outputs, which is `predict`'s at every image size)."""
    from nseg_infer.regions import ArraySource
    from nseg_infer.runners.prepare import model_input

    inp = model_input(predictor.bundle, ArraySource(image))
    if predictor.bundle.kind == "unet":
        found = predictor.probabilities(inp.source)
        labels = predictor.instances(found, modality=found.plan.modality)
    else:
        found = predictor.detections(inp.source)
        labels = predictor.merge_detections(found, inp.source.shape)[0]
    return found, inp.to_input(labels)[0]


def predictor_target(target: TargetReport, cases: Cases, bundle: Any, ref: Any, test: Any) -> None:
    """Two Predictors on one bundle's metadata, differing only in their backend (`ref`, `test`:
    objects with `run(NCHW) -> {output: array}`, as nseg_infer.engine.backends has them)."""
    from nseg_infer.engine.predictor import Predictor, RunConfig

    tol = target.tolerance
    ref_p = Predictor(bundle, RunConfig(device="cpu"), backend=ref)
    test_p = Predictor(bundle, RunConfig(device="cpu"), backend=test)
    thr = float(bundle.metadata.get("maskrcnn", {}).get("graph_score_threshold", 0.05))
    for name, image in cases.images:
        try:
            # One model pass per side and image: the labels are the instance step on the very
            # fields or detections compared (`runtime_outputs`: `predict`'s labels), not a second run.
            rf, rl = runtime_outputs(ref_p, image)
            tf, tl = runtime_outputs(test_p, image)
            if bundle.kind == "unet":
                n_tiles = len(rf.plan.grid.tiles)
                for k, (r, t) in enumerate(zip(rf.fields, tf.fields, strict=True)):
                    case = name if len(rf.fields) == 1 else f"{name}#block{k}"
                    target.tensors.append(compare_arrays(case, "field", r, t, rtol=tol.rtol, atol=tol.atol,
                                                         note=f"{n_tiles} tiles"))
            else:
                for (tile, r), (_, t) in zip(rf, tf, strict=True):
                    target.tensors += compare_detections(f"{name}#tile{tile.index}", r, t, tol, thr)
            target.instances.append(compare_instances(name, rl, tl, tol.min_f1))
        except Exception as e:
            target.errors.append(f"{name}: {type(e).__name__}: {e}")
    for name, x in cases.tensors:
        try:
            r, t = ref.run(x), test.run(x)
            if bundle.kind == "unet":
                for out in bundle.outputs:
                    target.tensors.append(compare_arrays(name, out.name, r[out.name], t[out.name],
                                                         rtol=tol.rtol, atol=tol.atol))
            else:
                target.tensors += compare_detections(name, r, t, tol, thr)
        except Exception as e:
            target.errors.append(f"{name}: {type(e).__name__}: {e}")


def check_metadata(meta: dict[str, Any], cfg: Any, ckpt: dict[str, Any]) -> list[str]:
    """The bundle must describe this checkpoint: same kind, normalisation, resize, size divisor, thresholds
    and splits (both Predictors of a parity run read the same metadata, so only this catches them)."""
    from nseg_train import deploy

    errs = []
    if meta.get("kind") != cfg.model.kind:
        errs.append(f"bundle kind {meta.get('kind')!r} != checkpoint kind {cfg.model.kind!r}")
        return errs
    want = deploy.preprocessing_section(cfg)
    if meta["preprocessing"].get("normalization") != want["normalization"]:
        errs.append(f"normalisation {meta['preprocessing'].get('normalization')} != checkpoint's {want['normalization']}")
    if meta["preprocessing"].get("resize") != want.get("resize"):
        errs.append(f"resize {meta['preprocessing'].get('resize')} != checkpoint's {cfg.data.resize}")
    if meta["preprocessing"].get("size_divisor") != deploy.size_divisor(cfg):
        errs.append(f"size_divisor {meta['preprocessing'].get('size_divisor')} != {deploy.size_divisor(cfg)}")
    want_post = deploy.postprocessing_section(cfg)
    if dict(meta["postprocessing"]) != want_post:
        errs.append(f"postprocessing {dict(meta['postprocessing'])} != checkpoint's config {want_post}")
    if meta.get("training", {}).get("splits_sha256") != ckpt.get("splits_sha256"):
        errs.append("training.splits_sha256 differs from the checkpoint's (bundle made from another run?)")
    return errs


def _variant_path(bundle: Any, variant: dict[str, Any]) -> Path:
    from nseg_infer.engine.bundle import sha256_file

    p = bundle.path / str(variant["file"])
    if not p.is_file():
        raise ParityError(f"{p}: variant named in metadata.json does not exist")
    actual = sha256_file(p)
    if actual != str(variant.get("sha256", "")).lower():
        raise ParityError(f"{p}: sha256 mismatch: metadata.json says {variant.get('sha256')}, file is {actual}")
    return p


def run_parity(checkpoint: Path, bundle_dir: Path, *, data_dir: Path | None = None, max_images: int = 6,
               seed: int = 0, variants: Sequence[str] | None = None, threads: int | None = None) -> ParityReport:
    """torch (checkpoint) vs ONNX Runtime (bundle) for model.onnx and every listed ONNX variant."""
    # Recorded relative to the working directory, so a shipped report names no machine's paths.
    report = ParityReport(checkpoint=recorded_path(checkpoint), bundle=recorded_path(bundle_dir))
    try:
        from nseg_infer.engine.bundle import BundleError, load_bundle
        from nseg_train.checkpoint import load_model

        try:
            bundle = load_bundle(bundle_dir)
        except BundleError as e:
            report.errors.append(f"bundle rejected by nseg_infer.engine.bundle: {e}")
            return report
        model, cfg, ckpt = load_model(Path(checkpoint))
        report.kind = bundle.kind
        report.errors += check_metadata(dict(bundle.metadata), cfg, ckpt)
        import torch
        from nseg_infer.engine.backends import OrtBackend
        from nseg_train.deploy import TorchBackend

        cases = cases_for(bundle, data_dir, max_images, seed)
        ref = TorchBackend(model, torch.device("cpu"), kind=bundle.kind)
        report.cases = cases.names()
        targets = [("fp32", bundle.model_path)]
        for v in bundle.metadata.get("variants", []) or []:
            if variants is None or v.get("precision") in variants:
                try:
                    targets.append((str(v.get("precision", "fp16")), _variant_path(bundle, v)))
                except ParityError as e:
                    report.errors.append(str(e))
        for precision, path in targets:
            t = TargetReport(f"onnxruntime:{precision} ({path.name}) vs torch", TOLERANCES[precision])
            report.targets.append(t)
            try:
                test = OrtBackend(replace(bundle, model_path=path), ["CPUExecutionProvider"], threads=threads)
            except Exception as e:
                t.errors.append(f"{path}: ONNX Runtime cannot load the model: {e}")
                continue
            predictor_target(t, cases, bundle, ref, test)
    except Exception as e:
        report.errors.append(f"{type(e).__name__}: {e}")
    return report


def format_report(report: ParityReport) -> str:
    lines = [f"parity {'PASSED' if report.passed else 'FAILED'}: {report.bundle} ({report.kind}, "
             f"{len(report.cases)} cases)"]
    for t in report.targets:
        s = t.summary()
        tol = t.tolerance
        f1 = "n/a" if s["min_f1"] is None else f"{s['min_f1']:.4f}"
        mx = "n/a" if s["max_abs"] is None else f"{s['max_abs']:.3g}"
        lines.append(f"  {t.target}: {'ok' if t.passed else 'FAIL'}; max abs {mx} (atol {tol.atol:g}, "
                     f"rtol {tol.rtol:g}); min instance F1 {f1} (>= {tol.min_f1}); equal counts "
                     f"{s['equal_count_fraction']:.0%}")
    lines += [f"  - {f}" for f in report.failures()[:20]]
    return "\n".join(lines)


def dumps(report: ParityReport) -> str:
    return json.dumps(_finite(report.to_json()), indent=2)
