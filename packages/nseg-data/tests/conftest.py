"""Fixtures building synthetic datasets in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests import the synthetic-data helpers by module name (pytest runs with importlib mode).
sys.path.insert(0, str(Path(__file__).parent))

from nseg_data_synth import kaggle_files, rle_csv_text, write_files, zip_bytes


@pytest.fixture
def kaggle_dir(tmp_path: Path) -> Path:
    return write_files(tmp_path / "stage1_train", kaggle_files())


@pytest.fixture
def competition_zip(tmp_path: Path) -> Path:
    """The download as Kaggle ships it: zips (and zipped CSVs) inside one zip."""
    train = kaggle_files()
    test = {k: v for k, v in kaggle_files(("t1",)).items() if "/masks/" not in k}
    outer = {
        "stage1_train.zip": zip_bytes(train),
        "stage1_test.zip": zip_bytes(test),
        "stage1_train_labels.csv.zip": zip_bytes({"stage1_train_labels.csv": rle_csv_text().encode()}),
        "stage1_solution.csv.zip": zip_bytes({"stage1_solution.csv": rle_csv_text(("t1",), solution=True).encode()}),
    }
    p = tmp_path / "data-science-bowl-2018.zip"
    p.write_bytes(zip_bytes(outer))
    return p


@pytest.fixture()
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk. Unmounted at the end, also when the test fails."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield d
    if subprocess.run(["umount", str(d)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
