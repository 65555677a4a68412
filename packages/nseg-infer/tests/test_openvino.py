"""The optional OpenVINO backend: same outputs as ONNX Runtime fp32, chosen by `auto` only where the
bundle's parity report trusts it, never by `--device cpu`, bf16 only on CPUs that compute it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from nseg_infer.engine import backends_openvino as ovb
from nseg_infer.engine import cpu
from nseg_infer.engine.backends import OrtBackend, create_backend
from nseg_infer.engine.bundle import default_bundle_path, load_bundle

needs_openvino = pytest.mark.skipif(not ovb.available(), reason="OpenVINO not installed (nseg-infer[openvino])")


def _bundle_with_parity(tmp_path, targets):
    folder = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), folder)
    report = json.loads((folder / "parity.json").read_text())
    report["targets"] = [t for t in report["targets"] if not t["target"].startswith("openvino")] + targets
    (folder / "parity.json").write_text(json.dumps(report))
    return load_bundle(folder)


def _target(precision, passed=True, min_f1=1.0):
    return {"target": ovb.parity_target(precision), "passed": passed, "summary": {"min_f1": min_f1}}


def test_trust_needs_a_passing_target_with_f1_one(tmp_path):
    assert ovb.trusted(_bundle_with_parity(tmp_path / "a", [_target("fp32")]), "fp32")
    assert not ovb.trusted(_bundle_with_parity(tmp_path / "b", [_target("fp32")]), "bf16")
    assert not ovb.trusted(_bundle_with_parity(tmp_path / "c", [_target("fp32", min_f1=0.999)]), "fp32")
    assert not ovb.trusted(_bundle_with_parity(tmp_path / "d", [_target("fp32", passed=False)]), "fp32")


def test_bf16_only_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert ovb.precisions() == ("fp32",)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert ovb.precisions() == ("bf16", "fp32")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "amx_tile", "amx_bf16"}))
    assert ovb.precisions() == ("bf16", "fp32")


@needs_openvino
def test_fp32_matches_onnxruntime():
    bundle = load_bundle(default_bundle_path())
    x = np.random.default_rng(0).normal(0.3, 0.5, (2, 3, 64, 96)).astype(np.float32)
    ref = OrtBackend(bundle, ["CPUExecutionProvider"], threads=1).run(x)
    got = ovb.OpenVinoBackend(bundle, precision="fp32", threads=1).run(x)
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].shape == ref[k].shape
        np.testing.assert_allclose(got[k], ref[k], atol=1e-4)


@needs_openvino
def test_auto_takes_openvino_only_when_trusted_and_cpu_never(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset())  # fp32 whatever this CPU is
    trusted = _bundle_with_parity(tmp_path / "t", [_target("fp32")])
    untrusted = _bundle_with_parity(tmp_path / "u", [])
    assert create_backend(trusted, "auto", threads=1).name == "openvino:CPU:fp32"
    assert isinstance(create_backend(untrusted, "auto", threads=1), OrtBackend)
    assert isinstance(create_backend(trusted, "cpu", threads=1), OrtBackend)
    assert create_backend(untrusted, "openvino", threads=1).name == "openvino:CPU:fp32"
    # An AMX CPU whose bundle trusts only fp32 runs OpenVINO in fp32, not ONNX Runtime.
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"amx_tile", "amx_bf16"}))
    assert create_backend(trusted, "auto", threads=1).name == "openvino:CPU:fp32"


@pytest.mark.skipif(not (ovb.available() and cpu.cpu_bf16_native()),
                    reason="bf16 inference needs OpenVINO and a CPU that computes bf16 (AMX or AVX-512 BF16)")
def test_openvino_by_name_runs_the_fastest_precision_trusted_or_not(tmp_path):
    trusted = _bundle_with_parity(tmp_path / "t", [_target("fp32")])
    assert create_backend(trusted, "auto", threads=1).name == "openvino:CPU:fp32"
    assert create_backend(trusted, "openvino", threads=1).name == "openvino:CPU:bf16"
    both = _bundle_with_parity(tmp_path / "b", [_target("fp32"), _target("bf16")])
    assert create_backend(both, "auto", threads=1).name == "openvino:CPU:bf16"


@pytest.mark.skipif(not (ovb.available() and cpu.cpu_bf16_native()),
                    reason="bf16 inference needs OpenVINO and a CPU that computes bf16 (AMX or AVX-512 BF16)")
def test_bf16_close_to_fp32():
    bundle = load_bundle(default_bundle_path())
    x = np.random.default_rng(1).normal(0.3, 0.5, (1, 3, 128, 128)).astype(np.float32)
    ref = OrtBackend(bundle, ["CPUExecutionProvider"], threads=1).run(x)
    got = ovb.OpenVinoBackend(bundle, precision="bf16", threads=1).run(x)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=5e-2)


def test_each_threads_first_inference_runs_alone():
    """Two threads' first calls at once once hung OpenVINO's Python binding: every first call of
    a thread (its infer request's first) must hold the module's first-call lock."""
    import threading

    firsts = []

    class Request:
        def __init__(self):
            self.n = 0

        def infer(self, inputs):
            if self.n == 0:
                firsts.append(ovb._FIRST_CALLS.locked())
            self.n += 1
            return {"out": inputs[0][:, :1]}

    class Model:
        outputs = ("out",)

        def create_infer_request(self):
            return Request()

    backend = object.__new__(ovb.OpenVinoBackend)
    backend.model, backend.output_names, backend._local = Model(), ["fg"], threading.local()
    x = np.zeros((1, 3, 8, 8), np.float32)

    def twice():
        backend.run(x)
        backend.run(x)

    threads = [threading.Thread(target=twice) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert firsts == [True, True, True]  # one request per thread, each first call under the lock
    assert backend.run(x)["fg"].shape == (1, 1, 8, 8)
