"""Small helpers shared by the tests (conftest holds the fixtures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
SAMPLE_DATA = REPO / "examples" / "sample" / "stage1_train"


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def perturb_weights(bundle: Path, scale: float = 0.05) -> None:
    """Add noise to the largest initializer of model.onnx and re-sign it, so the reader accepts the file
    and only the numbers can give it away."""
    import onnx
    from nseg_infer.engine.bundle import sha256_file
    from onnx import numpy_helper

    path = bundle / "model.onnx"
    m = onnx.load(str(path))
    inits = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    big = max(inits, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(big).copy()
    arr += np.random.default_rng(0).normal(0, scale * (np.abs(arr).mean() + 1e-3), arr.shape).astype(np.float32)
    big.CopyFrom(numpy_helper.from_array(arr, big.name))
    onnx.save(m, str(path))
    set_meta(bundle, sha256=sha256_file(path))


def set_meta(bundle: Path, **updates) -> dict:
    p = bundle / "metadata.json"
    meta = json.loads(p.read_text())
    meta.update(updates)
    p.write_text(json.dumps(meta))
    return meta


def read_report(path: Path) -> dict:
    return json.loads(Path(path).read_text())
