"""OpenVINO on the CPU: the optional `openvino` extra, imported only when this backend is made.

On the CPUs measured (docs/benchmarks.md) OpenVINO runs the UNet faster than ONNX Runtime in fp32,
and faster still in bf16 where the CPU computes bf16 in hardware (AMX, or AVX-512 BF16: 1.4x its
fp32 on 2 cores of an AMD EPYC). A bundle trusts it only once its parity report records
OpenVINO's labels equal to ONNX Runtime fp32's (instance F1@0.5 of 1.000 on every image of the
parity set, `nseg-export parity-openvino`), per precision: `--device auto` takes it only then;
`--device openvino` runs the fastest precision whatever the report says.

bf16 is asked for only where the CPU computes it natively (`cpu.cpu_bf16_native`); elsewhere it
is emulated and many times slower, and the inference precision is pinned to f32 explicitly.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from nseg_infer.engine.bundle import Bundle
from nseg_infer.engine.cpu import cpu_bf16_native, cpu_lanes, cpu_threads

PRECISIONS = ("fp32", "bf16")
# Each thread's first inference runs alone. Two first calls at once have hung `nseg-infer run`
# for good (OpenVINO 2026.4 on two lanes): one thread held the binding's one-time initialisation
# and waited for the GIL, while the other held the GIL and waited for that initialisation.
_FIRST_CALLS = threading.Lock()


class OpenVinoUnavailable(RuntimeError):
    pass


def precisions() -> tuple[str, ...]:
    """The precisions worth running on this CPU, fastest first."""
    return ("bf16", "fp32") if cpu_bf16_native() else ("fp32",)


def parity_target(precision: str) -> str:
    """The name of the target a bundle's parity report holds for OpenVINO at `precision`."""
    return f"openvino:{precision} vs onnxruntime:fp32"


def trusted(bundle: Bundle, precision: str) -> bool:
    """True when the bundle's `parity.json` records OpenVINO at `precision` passing against ONNX
    Runtime fp32 with instance F1@0.5 of 1.000 on every image."""
    path = Path(bundle.path) / "parity.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    for t in report.get("targets", []):
        if t.get("target") == parity_target(precision):
            summary = t.get("summary") or {}
            return bool(t.get("passed")) and summary.get("min_f1") == 1.0
    return False


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoBackend:
    """The bundle's ONNX model compiled by OpenVINO for the CPU, dynamic batch and tile size. With
    two or more cores it takes `cpu.cpu_lanes` calls at once, as `OrtBackend` does: one stream per
    lane on its share of the cores, one infer request per calling thread (2 x 2 tiles ran 1.11x the pixel rate
    of one 4-tile request on 2 cores of an AMD EPYC with AVX-512 BF16, no AMX). `lanes` overrides
    the choice."""

    def __init__(self, bundle: Bundle, *, precision: str = "fp32", threads: int | None = None,
                 lanes: int | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        try:
            import openvino as ov
        except ImportError as e:
            raise OpenVinoUnavailable(f"OpenVINO is not installed ({e}); install nseg-infer[openvino]") from e
        # The cores this process may use, as ONNX Runtime's pool is sized (a container's share).
        cores = threads or cpu_threads()
        self.lanes = cpu_lanes(cores, lanes)
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            # One stream per lane, the cores shared between them.
            "PERFORMANCE_HINT": "THROUGHPUT" if self.lanes > 1 else "LATENCY",
            "NUM_STREAMS": str(self.lanes),
            "INFERENCE_NUM_THREADS": str(cores),
        }
        core = ov.Core()
        self.model = core.compile_model(core.read_model(str(bundle.model_path)), "CPU", config)
        self._local = threading.local()  # an infer request serves one call at a time
        self.output_names = [o.get_any_name() for o in self.model.outputs]
        self.precision = precision
        self.name = f"openvino:CPU:{precision}"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        request = getattr(self._local, "request", None)
        x = np.ascontiguousarray(batch, np.float32)
        if request is None:
            with _FIRST_CALLS:
                request = self._local.request = self.model.create_infer_request()
                res = request.infer([x])
        else:
            res = request.infer([x])
        # The request reuses its output buffers on the next call: copy them out.
        return {name: np.array(res[out], np.float32) for name, out in zip(self.output_names, self.model.outputs,
                                                                          strict=True)}
