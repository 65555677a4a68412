"""Fixtures for nseg-infer tests (helpers live in infer_testkit, importable from the tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# --import-mode=importlib does not put test folders on sys.path; the helper module needs it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from infer_testkit import make_mosaic, write_bundle


@pytest.fixture(scope="session")
def unet_bundle(tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle") / "unet")


@pytest.fixture(scope="session")
def maskrcnn_bundle(tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle") / "maskrcnn", "maskrcnn", batch=1)


@pytest.fixture(scope="session")
def mosaic() -> np.ndarray:
    return make_mosaic()
