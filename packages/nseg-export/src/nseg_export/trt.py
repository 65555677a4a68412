"""TensorRT engines for a bundle (TensorRT >= 10 Python API), checked against ONNX Runtime.

An engine is only valid for the TensorRT version and GPU model that built it, so both are stored
with it in metadata.json and the file name carries the GPU. Parity runs the runtime's own
Predictor with the runtime's own `TensorRTBackend` against the same Predictor on ONNX Runtime; an
engine is registered in the bundle only after it passed, and a failing one is deleted.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nseg_data.atomic import atomic_path, write_bytes_atomic
from nseg_data.paths import recorded_path
from nseg_infer.engine.tiling import tile_grid

from nseg_export.parity import (
    TOLERANCES,
    Cases,
    ParityError,
    TargetReport,
    cases_for,
    predictor_target,
    real_images,
)


class TrtUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing: nothing can be built or checked here."""


class _Rejected(Exception):
    """An engine that failed parity: its temp file is discarded, never renamed into the bundle."""


def require_trt() -> Any:
    missing = []
    trt = None
    try:
        import tensorrt as trt
    except ImportError as e:
        missing.append(f"the `tensorrt` Python package is not installed ({e}); install it with "
                       "pip install 'nseg-export[trt]' on a machine with an NVIDIA GPU")
    import torch

    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible to this process (torch.cuda.is_available() is False); "
                       "an engine is built on, and only runs on, the GPU model it is meant for")
    if missing:
        raise TrtUnavailable("; ".join(missing))
    return trt


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


@dataclass(frozen=True)
class Profile:
    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def bundle_profile(meta: dict[str, Any]) -> Profile:
    """The shapes `nseg_infer.engine.tiling` produces: full tiles in batches up to tiling.batch, and for images
    smaller than one tile core a single tile just big enough (image + 2 halo, rounded to the divisor)."""
    name = meta["inputs"][0]["name"]
    t = meta["tiling"]
    tile, halo, batch = int(t["tile"]), int(t["halo"]), int(t.get("batch", 1))
    if meta["kind"] == "maskrcnn":
        shape = (1, 3, tile, tile)
        return Profile(name, shape, shape, shape)
    div = int(meta["preprocessing"].get("size_divisor", 1))
    # The tiling's own smallest tile (a one-pixel image's) and its largest, the full tile.
    smallest = tile_grid(1, 1, tile, halo, div).tile_shape
    return Profile(name, (1, 3, *smallest), (batch, 3, tile, tile), (batch, 3, tile, tile))


def build_engine(onnx_path: Path, profile: Profile, *, fp16: bool = False, int8: bool = False,
                 calibrator: Any = None, workspace_bytes: int = 4 << 30) -> bytes:
    trt = require_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}: " + "; ".join(errs))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if not (fp16 or int8):
        # TF32 is on by default and costs ~3 decimal digits; an "fp32" engine should be held to fp32 tolerances.
        config.clear_flag(trt.BuilderFlag.TF32)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    prof = builder.create_optimization_profile()
    prof.set_shape(profile.input, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(prof)
    if int8:
        if calibrator is None:
            raise ValueError("INT8 needs a calibrator over real images")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(prof)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    return bytes(serialized)


# ---------------------------------------------------------------- calibration


def calibration_batches(bundle: Any, calib_dir: Path, n_images: int, seed: int = 0) -> list[np.ndarray]:
    """Normalised tiles from real images, batched at the profile's optimum batch size."""
    meta = dict(bundle.metadata)
    try:
        images = real_images(Path(calib_dir), n_images)
    except ParityError:
        images = []
    if not images:
        from nseg_infer.sources.imageio import read_image

        files = sorted(p for p in Path(calib_dir).rglob("*")
                       if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"))[:n_images]
        images = [(p.name, read_image(p)) for p in files]
    if not images:
        raise ValueError(f"{calib_dir}: no calibration images found (INT8 must be calibrated on real images)")
    prof = bundle_profile(meta)
    tile = prof.opt[-1]
    batch = prof.opt[0]
    rng = np.random.default_rng(seed)
    tiles = []
    from nseg_infer.engine.preprocess import normalize

    for _, img in images:
        x = normalize(img, bundle.preprocessing.normalization)
        h, w = x.shape[:2]
        y0 = int(rng.integers(0, max(h - tile, 0) + 1))
        x0 = int(rng.integers(0, max(w - tile, 0) + 1))
        crop = x[y0:y0 + tile, x0:x0 + tile]
        pad = ((0, tile - crop.shape[0]), (0, tile - crop.shape[1]), (0, 0))
        crop = np.pad(crop, pad, mode="reflect" if meta["kind"] == "unet" and min(crop.shape[:2]) > tile // 2
                      else "constant")
        tiles.append(crop.transpose(2, 0, 1))
    while len(tiles) % batch:  # TensorRT calibrates on whole batches only
        tiles.append(tiles[len(tiles) % len(images)])
    arr = np.ascontiguousarray(np.stack(tiles), np.float32)
    return [arr[i:i + batch] for i in range(0, len(arr), batch)]


def make_calibrator(batches: list[np.ndarray], cache_file: Path) -> Any:
    """IInt8EntropyCalibrator2 over real-image tiles. TensorRT 10 deprecates implicit INT8 in favour of
    Q/DQ graphs (ModelOpt) but still builds with it; the cache makes rebuilds skip calibration."""
    import torch

    trt = require_trt()

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.i = 0
            self.current: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.i >= len(batches):
                return None
            self.current = torch.from_numpy(batches[self.i]).cuda()  # kept alive until the next call
            self.i += 1
            return [int(self.current.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            write_bytes_atomic(cache_file, bytes(cache))

    return Calibrator()


# ---------------------------------------------------------------- parity against ONNX Runtime


def _fit_cases(cases: Cases, prof: Profile, kind: str) -> Cases:
    """Keep raw tensors inside the engine's profile (batches split, a full batch at the optimum
    shape added); images go through the Predictor, whose tiles the profile covers."""
    if kind == "maskrcnn":
        return cases
    tile_h, tile_w = prof.max[2], prof.max[3]
    tensors = []
    for n, x in cases.tensors:
        x = x[:, :, :tile_h, :tile_w]
        for i in range(0, len(x), prof.max[0]):
            tensors.append((n if i == 0 else f"{n}#{i}", x[i:i + prof.max[0]]))
    rng = np.random.default_rng(7)
    full = rng.normal(0.3, 0.5, (prof.opt[0], 3, prof.opt[2], prof.opt[3])).astype(np.float32)
    tensors.append((f"random:{prof.opt[0]}x{prof.opt[2]}x{prof.opt[3]}", full))
    return Cases(cases.images, tensors)


def engine_parity(bundle_dir: Path, engine_path: Path, *, data_dir: Path | None = None, max_images: int = 6,
                  seed: int = 0, precision: str | None = None) -> TargetReport:
    """The runtime's Predictor with its own TensorRTBackend against the same Predictor on ONNX Runtime."""
    require_trt()
    from nseg_infer.engine.backends import OrtBackend, TensorRTBackend
    from nseg_infer.engine.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    meta = dict(bundle.metadata)
    if precision is None:
        entry = next((e for e in meta.get("engines", []) if e.get("file") == Path(engine_path).name), None)
        precision = entry["precision"] if entry else next(
            (p for p in ("int8", "fp16", "fp32") if f".{p}." in Path(engine_path).name), "fp16")
    tol = TOLERANCES[f"trt-{precision}"]
    report = TargetReport(f"tensorrt:{precision} ({Path(engine_path).name}) vs onnxruntime:fp32", tol)
    cases = _fit_cases(cases_for(bundle, data_dir, max_images, seed), bundle_profile(meta), bundle.kind)
    try:
        ref, test = OrtBackend(bundle, ["CPUExecutionProvider"]), TensorRTBackend(Path(engine_path))
    except Exception as e:
        report.errors.append(f"{type(e).__name__}: {e}")
        return report
    predictor_target(report, cases, bundle, ref, test)
    return report


@dataclass
class EngineResult:
    passed: bool
    engine: Path | None
    report_path: Path
    message: str


def build_bundle_engine(bundle_dir: Path, *, fp16: bool = False, int8: bool = False, calib_dir: Path | None = None,
                        calib_images: int = 32, data_dir: Path | None = None, max_images: int = 6,
                        workspace_gib: float = 4.0, report_path: Path | None = None) -> EngineResult:
    """Build, check against ONNX Runtime, and only then register the engine in metadata.json."""
    import json

    from nseg_infer.engine.bundle import load_bundle, sha256_file

    from nseg_export.metadata import read_metadata, write_json_atomic
    from nseg_export.parity import ParityReport

    trt = require_trt()
    bundle_dir = Path(bundle_dir)
    bundle = load_bundle(bundle_dir)  # refuses a bundle whose model does not match its sha256
    meta = read_metadata(bundle_dir)
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    gpu = gpu_name()
    name = f"model.{precision}.{_slug(gpu)}.engine"
    prof = bundle_profile(meta)
    calibrator = None
    if int8:
        if calib_dir is None:
            raise ValueError("--int8 needs --calib DIR")
        batches = calibration_batches(bundle, calib_dir, calib_images)
        calibrator = make_calibrator(batches, bundle_dir / f"calib.{_slug(gpu)}.cache")
    t0 = time.perf_counter()
    blob = build_engine(bundle.model_path, prof, fp16=fp16, int8=int8, calibrator=calibrator,
                        workspace_bytes=int(workspace_gib * (1 << 30)))
    build_s = time.perf_counter() - t0
    final = bundle_dir / name
    report_path = report_path or bundle_dir / f"{name}.parity.json"
    try:
        # The engine is checked under its temp name and renamed into the bundle only if it passes.
        with atomic_path(final) as tmp:
            tmp.write_bytes(blob)
            target = engine_parity(bundle_dir, tmp, data_dir=data_dir, max_images=max_images, precision=precision)
            rep = ParityReport(checkpoint="(onnx reference)", bundle=recorded_path(bundle_dir), kind=bundle.kind, targets=[target])
            rep.write(report_path)
            if not rep.passed:
                raise _Rejected("; ".join(rep.failures()[:5]))
    except _Rejected as e:
        return EngineResult(False, None, report_path,
                            f"TensorRT {precision} engine FAILED parity against ONNX Runtime and was not "
                            f"added to the bundle: {e} (report: {report_path})")
    cap = ".".join(str(v) for v in __import__("torch").cuda.get_device_capability(0))
    entry = {"file": name, "precision": precision, "tensorrt": trt.__version__, "gpu": gpu,
             "compute_capability": cap, "profiles": [prof.to_json()], "sha256": sha256_file(final),
             "build_seconds": round(build_s, 1), "parity": json.loads(json.dumps(target.summary()))}
    meta["engines"] = [entry] + [e for e in meta.get("engines", []) if e.get("file") != name]
    # The engine file is in place before metadata.json names it: a crash between the two leaves an
    # engine no metadata names (the runtime ignores it), never metadata naming a missing engine.
    write_json_atomic(bundle_dir / "metadata.json", meta)
    s = target.summary()
    return EngineResult(True, final, report_path,
                        f"built {final} (TensorRT {trt.__version__}, {gpu}, {precision}, {build_s:.0f}s); parity vs "
                        f"ONNX Runtime passed: max abs {s['max_abs']:.3g}, min instance F1 {s['min_f1']}; "
                        f"report: {report_path}")

