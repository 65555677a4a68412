"""An OpenVINO parity run is recorded in the bundle's parity report: replacing an earlier run of
the same target, the report's verdict recomputed from all targets."""

from __future__ import annotations

import json

from nseg_export.openvino_parity import record
from nseg_export.parity import TOLERANCES, InstanceCheck, TargetReport, TensorCheck


def _target(f1: float) -> TargetReport:
    t = TargetReport("openvino:fp32 vs onnxruntime:fp32", TOLERANCES["openvino-fp32"])
    t.tensors.append(TensorCheck("blobs:64x64", "field", [2, 64, 64], 1e-6, 1e-5, 0, True, ""))
    t.instances.append(InstanceCheck("blobs:64x64", 10, 10, f1, f1 >= 1.0))
    return t


def test_record_replaces_the_target_and_recomputes_the_verdict(tmp_path):
    path = tmp_path / "parity.json"
    path.write_text(json.dumps({"format": "nseg-parity/1", "passed": True, "errors": [], "failures": [],
                                "targets": [{"target": "onnxruntime:fp32 (model.onnx) vs torch", "passed": True,
                                             "failures": []}]}))
    rep = record(path, _target(0.98))
    assert not rep["passed"]
    assert any("F1@0.5 0.9800 < 1.0" in f for f in rep["failures"])
    rep = record(path, _target(1.0))
    on_disk = json.loads(path.read_text())
    assert rep["passed"] and on_disk["passed"]
    assert [t["target"] for t in on_disk["targets"]] == ["onnxruntime:fp32 (model.onnx) vs torch",
                                                         "openvino:fp32 vs onnxruntime:fp32"]
    assert on_disk["targets"][1]["summary"]["min_f1"] == 1.0
