"""tools/source_curves.py: per-source validation curves read from training logs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAD = ("epoch,step,val_dsb,val_dsb_raw,val_dsb_aitslab,val_f1_50_aitslab,val_dsb_tnbc,val_f1_50_tnbc,"
        "val_dsb_source_mean\n")


def _tool():
    spec = importlib.util.spec_from_file_location("source_curves", ROOT / "tools" / "source_curves.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_curves_keep_the_validated_epochs_of_each_source_shifted_by_the_offset(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(HEAD + "0,200,,,,,,,\n1,400,0.5,0.49,0.6,0.8,0.25,0.64,0.42\n2,600,0.52,0.5,0.61,0.81,0.27,0.66,0.44\n")
    name, curves = _tool().read_curve(f"fp32 run={log}@3")
    assert name == "fp32 run"
    assert sorted(curves) == ["aitslab", "tnbc"]  # raw and source_mean are not sources
    assert curves["tnbc"] == [(5, 0.25), (6, 0.27)]
    assert curves["aitslab"] == [(5, 0.6), (6, 0.61)]


def test_a_log_without_per_source_columns_is_refused_by_name(tmp_path):
    log = tmp_path / "plain.csv"
    log.write_text("epoch,step,val_dsb\n0,10,0.5\n")
    with pytest.raises(SystemExit, match=r"plain\.csv: no per-source"):
        _tool().read_curve(f"x={log}")


def test_the_chart_is_written(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(HEAD + "0,200,0.5,0.49,0.6,0.8,0.25,0.64,0.42\n")
    out = tmp_path / "c.png"
    import sys

    argv, sys.argv = sys.argv, ["source_curves.py", f"a={log}", "--reference", "tnbc=0.23", "--out", str(out)]
    try:
        assert _tool().main() == 0
    finally:
        sys.argv = argv
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
