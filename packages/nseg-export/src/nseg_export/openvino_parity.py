"""OpenVINO against ONNX Runtime fp32 on a bundle's parity set, recorded in its `parity.json`.

The runtime's `--device auto` takes OpenVINO at a precision only when this target passed
(`nseg_infer.engine.backends_openvino.trusted`): the same Predictor on both backends, the blended
fields within the tolerance and instance F1@0.5 of 1.000 on every image.
"""

from __future__ import annotations

import json
from pathlib import Path

from nseg_export.parity import TOLERANCES, TargetReport, cases_for, predictor_target


def openvino_parity(bundle_dir: Path, precision: str, *, data_dir: Path | None = None, max_images: int = 6,
                    seed: int = 0, threads: int | None = None) -> TargetReport:
    from nseg_infer.engine.backends import OrtBackend
    from nseg_infer.engine.backends_openvino import OpenVinoBackend, parity_target
    from nseg_infer.engine.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    report = TargetReport(parity_target(precision), TOLERANCES[f"openvino-{precision}"])
    try:
        ref = OrtBackend(bundle, ["CPUExecutionProvider"], threads=threads)
        test = OpenVinoBackend(bundle, precision=precision, threads=threads)
    except Exception as e:
        report.errors.append(f"{type(e).__name__}: {e}")
        return report
    predictor_target(report, cases_for(bundle, data_dir, max_images, seed), bundle, ref, test)
    return report


def record(report_path: Path, target: TargetReport) -> dict:
    """`target` into the parity report at `report_path` (replacing an earlier run of the same
    target); the report's `passed` and `failures` recomputed from all its targets."""
    from nseg_export.metadata import write_json_atomic
    from nseg_export.parity import _finite

    rep = json.loads(Path(report_path).read_text())
    targets = [t for t in rep.get("targets", []) if t.get("target") != target.target] + [target.to_json()]
    rep["targets"] = targets
    rep["failures"] = list(rep.get("errors", [])) + [f"[{t['target']}] {f}" for t in targets for f in t["failures"]]
    rep["passed"] = not rep.get("errors") and all(t["passed"] for t in targets)
    write_json_atomic(Path(report_path), _finite(rep))
    return rep
