"""Mask R-CNN through the real CLI: train, resume, evaluate, and the errors a user can make."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from nseg_data.split import load_splits
from typer.testing import CliRunner

from nseg_train.checkpoint import load_checkpoint, load_model
from nseg_train.cli import app
from nseg_train.config import config_from_dict

runner = CliRunner()

TINY_MASKRCNN = Path(__file__).parent / "data" / "tiny-maskrcnn.yaml"


@pytest.fixture(scope="module")
def tiny_maskrcnn():
    return TINY_MASKRCNN


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_resume_evaluate(synth_data, tiny_maskrcnn, tmp_path):
    data, splits = synth_data
    out = tmp_path / "mrcnn"
    common = ("--config", tiny_maskrcnn, "--data", data, "--splits", splits, "--out", out, "--limit-train", 4,
              "--limit-val", 1, "--workers", 0, "--no-progress", "--device", "cpu")
    r = run("maskrcnn", *common, "--epochs", 1)
    assert r.exit_code == 0, r.output
    for name in ("last.pt", "best.pt", "log.csv", "curves.png", "config.yaml", "splits.json"):
        assert (out / name).is_file(), name
    ck = load_checkpoint(out / "last.pt")
    assert ck["kind"] == "maskrcnn" and ck["epoch"] == 0 and ck["train_seconds"] > 0 and ck["machine"]
    assert config_from_dict(ck["config"]).maskrcnn.tile == 160
    before = {k: v.clone() for k, v in ck["model"].items()}

    r = run("maskrcnn", *common, "--epochs", 2, "--resume")
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(out / "last.pt")
    assert ck["epoch"] == 1 and ck["step"] == 4
    assert any((before[k] != v).any() for k, v in ck["model"].items() if v.is_floating_point())
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1] and all(r["val_dsb"] != "" for r in rows)

    model, cfg, _ = load_model(out / "best.pt")
    assert cfg.model.kind == "maskrcnn" and type(model).__name__ == "MaskRCNN"
    r = run("evaluate", out / "best.pt", "--split", "locked", "--data", data, "--out", tmp_path / "ev", "--device", "cpu", "--gallery", 2)
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [i["id"] for i in metrics["images"]] == sorted(load_splits(splits)["locked"])
    assert metrics["dsb_score"] == pytest.approx(sum(i["dsb"] for i in metrics["images"]) / len(metrics["images"]), abs=1e-12)
    assert (tmp_path / "ev" / "gallery.png").is_file()

    from nseg_train.tune import tune_checkpoint

    grid = {"score_threshold": (0.05, 0.5), "mask_threshold": (0.5,), "nms_threshold": (0.3, 0.5), "min_size": (4,)}
    t = tune_checkpoint(out / "best.pt", data=data, splits=None, out=tmp_path / "tuned.pt", cache=None, grid=grid, limit=1)
    _m, tcfg, tck = load_model(tmp_path / "tuned.pt")
    assert (tcfg.maskrcnn.box_score_thresh, tcfg.maskrcnn.box_nms_thresh) == (t.best["score_threshold"], t.best["nms_threshold"])
    assert len(t.table) == 4 and t.table[0]["dsb"] == max(row["dsb"] for row in t.table) and "optimizer" not in tck
    with pytest.raises(ValueError, match="locked"):
        tune_checkpoint(out / "best.pt", data=data, splits=None, out=tmp_path / "x.pt", cache=None, split="locked")


def test_bad_backbone_weights_and_wrong_kind_fail_cleanly(synth_data, tiny_maskrcnn, tmp_path):
    data, splits = synth_data
    bad = tmp_path / "weights.pth"
    bad.write_text("not weights")
    r = run("maskrcnn", "--config", tiny_maskrcnn, "--data", data, "--splits", splits, "--out", tmp_path / "o",
            "--backbone-weights", bad, "--epochs", 1, "--workers", 0, "--no-progress", "--device", "cpu")
    assert r.exit_code == 2 and "weights.pth: not a readable torch state_dict" in r.output
    assert not (tmp_path / "o" / "last.pt").exists()
    r = run("maskrcnn", "--config", "unet", "--data", data, "--splits", splits, "--out", tmp_path / "u")
    assert r.exit_code == 2 and "nseg-train unet" in r.output
