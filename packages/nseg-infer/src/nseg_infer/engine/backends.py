"""Execution backends, best first: TensorRT engine, ONNX Runtime (TensorRT / CUDA EP), OpenVINO on
the CPU (`backends_openvino`, where installed and trusted by the bundle's parity report), ONNX
Runtime CPU. `--device cpu` is always plain ONNX Runtime fp32 on the CPU.

Every backend is a callable object `run(batch NCHW float32) -> {output name: array}`; the rest of
the runtime never knows which one it has. Optional GPU stacks are imported lazily and a missing
one is reported, never faked.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

import numpy as np

from nseg_infer.engine.bundle import Bundle
from nseg_infer.engine.cpu import cpu_lanes, cpu_threads

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "trt", "openvino")


class BackendError(RuntimeError):
    pass


class Backend(Protocol):
    """`lanes`, where a backend has it: how many calls the runtime keeps in flight at once, each
    on its own thread (absent: 1)."""

    name: str

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


class FlipAverage:
    """Test-time augmentation for dense (UNet) outputs: the mean of the outputs for the batch, its
    horizontal, vertical and double flip, each flipped back. Four model calls per batch; the flips
    keep every tile's shape, so any backend and any tiling work unchanged. `flips`: another set of
    NCHW axes to flip (`()`: the batch as it is), e.g. for measuring what each flip adds."""

    FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))

    def __init__(self, backend: Backend, flips: tuple[tuple[int, ...], ...] = FLIPS) -> None:
        if not flips or any(set(a) - {2, 3} for a in flips):
            raise ValueError(f"flips must be a non-empty set of image axes (2, 3) to flip, got {flips}")
        self.backend, self.flips = backend, tuple(tuple(a) for a in flips)
        self.name = f"{getattr(backend, 'name', type(backend).__name__)}+flips"
        self.lanes = getattr(backend, "lanes", 1)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        total: dict[str, np.ndarray] = {}
        for axes in self.flips:
            x = np.ascontiguousarray(np.flip(batch, axes)) if axes else batch
            for k, v in self.backend.run(x).items():
                v = np.flip(v, axes) if axes else v
                total[k] = total[k] + v if k in total else v.astype(np.float32, copy=True)
        return {k: v / len(self.flips) for k, v in total.items()}


class OrtBackend:
    """ONNX Runtime. On the CPU alone it takes `cpu.cpu_lanes` calls at once, each on its share of
    the cores: on 2 cores of an AMD EPYC (AVX-512 BF16, no AMX) two single-threaded calls of 2
    tiles ran 1.06-1.20x the pixel rate of one two-threaded call of 4, in less memory
    (`tools/bench_pace.py`). A call's outputs are bitwise the same for any thread count and batch
    size. `lanes` overrides the choice."""

    def __init__(self, bundle: Bundle, providers: list, *, threads: int | None = None,
                 lanes: int | None = None) -> None:
        import onnxruntime as ort

        cores = threads or cpu_threads()
        self.lanes = cpu_lanes(cores, lanes) if providers == ["CPUExecutionProvider"] else 1
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Inter-op parallelism only adds contention for a single sequential graph.
        opts.intra_op_num_threads = max(1, cores // self.lanes)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(bundle.model_path), sess_options=opts, providers=providers)
        except Exception as e:
            raise BackendError(f"{bundle.model_path}: ONNX Runtime cannot load the model: {e}") from e
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        active = self.session.get_providers()
        self.name = "onnxruntime:" + (active[0].replace("ExecutionProvider", "") if active else "?")

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch, np.float32)})
        return dict(zip(self.output_names, outs, strict=True))


class TensorRTBackend:
    """Runs a serialized TensorRT engine (TensorRT >= 10 tensor API) with cuda-python for memory."""

    def __init__(self, engine_path: str | os.PathLike) -> None:
        try:
            import tensorrt as trt

            cudart = _import_cudart()
        except ImportError as e:
            raise BackendError(f"TensorRT is not installed ({e}); install nseg-infer[trt]") from e
        self._trt, self._cudart = trt, cudart
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            raise BackendError("TensorRT needs a CUDA GPU and none is visible")
        logger = trt.Logger(trt.Logger.WARNING)
        with open(engine_path, "rb") as f:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise BackendError(f"{engine_path}: TensorRT could not deserialize the engine (built for another GPU "
                               "or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == mode)
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        err, self.stream = cudart.cudaStreamCreate()
        self._buffers: dict[str, tuple[int, int]] = {}
        # Outputs whose shape depends on the data (a detector's N detections) have -1 dims until the
        # engine has run; since TensorRT 10 only an output allocator learns their real shape.
        self._dynamic = [n for n in self.output_names if -1 in tuple(self.engine.get_tensor_shape(n))]
        self._allocator = _make_output_allocator(trt, cudart) if self._dynamic else None
        for n in self._dynamic:
            self.context.set_output_allocator(n, self._allocator)
        self.name = "tensorrt"

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._cudart.cudaFree(ptr)
            err, ptr = self._cudart.cudaMalloc(nbytes)
            if int(err) != 0:
                raise BackendError(f"cudaMalloc of {nbytes} bytes failed: {err}")
            self._buffers[name] = (ptr, nbytes)
        return self._buffers[name][0]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        cudart, trt = self._cudart, self._trt
        x = np.ascontiguousarray(batch, np.float32)
        self.context.set_input_shape(self.input_name, x.shape)
        d_in = self._device_buffer(self.input_name, x.nbytes)
        cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                               self.stream)
        self.context.set_tensor_address(self.input_name, d_in)
        host, device = {}, {}
        for name in self.output_names:
            if name in self._dynamic:
                continue
            shape = tuple(self.context.get_tensor_shape(name))
            host[name] = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            device[name] = self._device_buffer(name, host[name].nbytes)
            self.context.set_tensor_address(name, device[name])
        if not self.context.execute_async_v3(self.stream):
            raise BackendError("TensorRT execution failed")
        if self._dynamic:
            cudart.cudaStreamSynchronize(self.stream)  # shapes are known once the engine has run
            for name in self._dynamic:
                shape = self._allocator.shapes[name]
                host[name] = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                device[name] = self._allocator.pointers[name][0]
        for name, arr in host.items():
            if arr.nbytes:
                cudart.cudaMemcpyAsync(arr.ctypes.data, device[name], arr.nbytes,
                                       cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)
        cudart.cudaStreamSynchronize(self.stream)
        return {k: host[k].astype(np.float32, copy=False) for k in self.output_names}

    def __del__(self) -> None:
        pointers = list(getattr(self, "_buffers", {}).values())
        allocator = getattr(self, "_allocator", None)
        if allocator is not None:
            pointers += list(allocator.pointers.values())
        for ptr, _ in pointers:
            self._cudart.cudaFree(ptr)


def _import_cudart():
    """cuda-python's runtime module: `cuda.bindings.runtime` since 12.8, `cuda.cudart` before."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def _make_output_allocator(trt, cudart):
    """A TensorRT output allocator (device memory from cudart) that records each output's real shape."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.pointers: dict[str, tuple[int, int]] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name, memory, size, alignment):
            ptr, have = self.pointers.get(tensor_name, (0, 0))
            if have >= max(size, 1):
                return ptr
            if ptr:
                cudart.cudaFree(ptr)
            err, ptr = cudart.cudaMalloc(max(size, 1))
            if int(err) != 0:
                return 0  # TensorRT reports the failed allocation as an execution error
            self.pointers[tensor_name] = (int(ptr), max(size, 1))
            return int(ptr)

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(shape)

    return OutputAllocator()


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - a hard dependency
        raise BackendError(f"onnxruntime is not installed: {e}") from e
    return list(ort.get_available_providers())


def create_backend(bundle: Bundle, device: str = "auto", *, threads: int | None = None) -> Backend:
    """The best available backend for `device`; the choice (and why others were skipped) is logged."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    available = ort_providers()
    skipped: list[str] = []
    if device in ("auto", "trt"):
        engines = bundle.engine_paths()
        if engines:
            try:
                backend: Backend = TensorRTBackend(engines[0][1])
                log.info("backend: TensorRT engine %s", engines[0][1].name)
                return backend
            except BackendError as e:
                skipped.append(f"TensorRT engine: {e}")
        else:
            skipped.append("TensorRT engine: none in bundle")
        if "TensorrtExecutionProvider" in available:
            try:
                backend = OrtBackend(bundle, ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                              "CPUExecutionProvider"], threads=threads)
                if backend.name.endswith("Tensorrt"):
                    log.info("backend: %s", backend.name)
                    return backend
            except BackendError as e:
                skipped.append(f"ORT TensorRT EP: {e}")
        else:
            skipped.append("ORT TensorRT EP: not available (needs onnxruntime-gpu)")
        if device == "trt":
            raise BackendError("--device trt requested but TensorRT is unavailable: " + "; ".join(skipped))
    if device in ("auto", "cuda"):
        if "CUDAExecutionProvider" in available:
            backend = OrtBackend(bundle, ["CUDAExecutionProvider", "CPUExecutionProvider"], threads=threads)
            if backend.name.endswith("CUDA"):
                log.info("backend: %s", backend.name)
                return backend
            skipped.append("ORT CUDA EP: failed to initialise (no usable GPU?)")
        else:
            skipped.append("ORT CUDA EP: not available (needs onnxruntime-gpu)")
        if device == "cuda":
            raise BackendError("--device cuda requested but CUDA is unavailable: " + "; ".join(skipped))
    if device in ("auto", "openvino"):
        from nseg_infer.engine import backends_openvino as ovb

        # auto: the fastest precision the bundle's parity report trusts (bf16 only where the CPU computes it).
        wanted = ovb.precisions()
        precision = next((p for p in wanted if ovb.trusted(bundle, p)), None) if device == "auto" else wanted[0]
        if not ovb.available():
            skipped.append("OpenVINO: not installed (nseg-infer[openvino])")
        elif precision is None:
            skipped.append(f"OpenVINO {'/'.join(wanted)}: no passing parity with ONNX Runtime fp32 in the bundle's "
                           "parity.json")
        else:
            try:
                backend = ovb.OpenVinoBackend(bundle, precision=precision, threads=threads)
                log.info("backend: %s", backend.name)
                return backend
            except Exception as e:  # an OpenVINO that cannot compile the model: ONNX Runtime instead
                skipped.append(f"OpenVINO: {e}")
        if device == "openvino":
            raise BackendError("--device openvino requested but OpenVINO is unavailable: " + "; ".join(skipped))
    backend = OrtBackend(bundle, ["CPUExecutionProvider"], threads=threads)
    log.info("backend: %s (%s)", backend.name, "; ".join(skipped) if skipped else "requested")
    return backend
