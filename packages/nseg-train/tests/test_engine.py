import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from nseg_data.split import load_splits
from typer.testing import CliRunner

from nseg_train.checkpoint import load_checkpoint, load_model
from nseg_train.cli import app
from nseg_train.config import load_config
from nseg_train.engine import RunOptions, TrainError, load_split_samples, train

runner = CliRunner()


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_trains_writes_everything_and_resumes(synth_data, tiny_config, tmp_path):
    data, splits = synth_data
    out = tmp_path / "run"
    r = run_cli("unet", "--config", tiny_config, "--data", data, "--splits", splits, "--out", out, "--epochs", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    for name in ("last.pt", "best.pt", "log.csv", "curves.png", "config.yaml", "splits.json"):
        assert (out / name).exists(), name
    ck = load_checkpoint(out / "last.pt")
    assert ck["epoch"] == 0 and ck["kind"] == "unet" and ck["splits_sha256"]
    w_before = {k: v.clone() for k, v in ck["model"].items()}

    # A second run into the same folder without --resume must refuse rather than overwrite.
    r = runner.invoke(app, ["unet", "--config", str(tiny_config), "--data", str(data), "--splits", str(splits), "--out", str(out), "--epochs", "2"])
    assert r.exit_code != 0 and "--resume" in r.output

    r = run_cli("unet", "--config", tiny_config, "--data", data, "--splits", splits, "--out", out, "--epochs", "2", "--resume", "--no-progress")
    assert r.exit_code == 0, r.output
    ck2 = load_checkpoint(out / "last.pt")
    assert ck2["epoch"] == 1 and ck2["step"] > ck["step"]
    assert any(not torch.equal(w_before[k], ck2["model"][k]) for k in w_before)
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(r["val_dsb"] != "" for r in rows)


def test_resume_is_deterministic(synth_data, tiny_config, tmp_path):
    """Two epochs straight == one epoch, stop, resume for the second."""
    data, splits = synth_data
    cfg = load_config(tiny_config)
    base = dict(data_dir=data, splits_file=splits, progress=False)
    a = train(cfg, RunOptions(out_dir=tmp_path / "a", epochs=2, **base))
    train(cfg, RunOptions(out_dir=tmp_path / "b", epochs=2, stop_after=1, **base))
    b = train(cfg, RunOptions(out_dir=tmp_path / "b", epochs=2, resume=True, **base))
    assert a["weights_sha256"] == b["weights_sha256"]


def test_a_non_finite_batch_is_skipped_aloud_and_many_stop_the_run(synth_data, tiny_config, tmp_path, monkeypatch, capsys):
    from nseg_train import tasks

    data, splits = synth_data
    cfg = load_config(tiny_config)
    base = dict(data_dir=data, splits_file=splits, progress=False, epochs=1)
    real = tasks.UNetTask.loss
    calls = []

    def nan_once(self, model, batch, device):
        loss, parts = real(self, model, batch, device)
        calls.append(1)
        return (loss * float("nan"), parts) if len(calls) == 1 else (loss, parts)

    monkeypatch.setattr(tasks.UNetTask, "loss", nan_once)
    train(cfg, RunOptions(out_dir=tmp_path / "a", **base))
    assert "batch skipped (1 of at most 2 this epoch)" in capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "a" / "log.csv").read_text().splitlines()))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))

    def always_nan(self, model, batch, device):
        loss, parts = real(self, model, batch, device)
        return loss * float("nan"), parts

    monkeypatch.setattr(tasks.UNetTask, "loss", always_nan)
    with pytest.raises(TrainError, match="3 batches skipped this epoch"):
        train(cfg, RunOptions(out_dir=tmp_path / "b", **base))


def test_resume_with_other_config_is_refused(synth_data, tiny_config, tmp_path):
    data, splits = synth_data
    cfg = load_config(tiny_config)
    train(cfg, RunOptions(data_dir=data, splits_file=splits, out_dir=tmp_path / "r", epochs=1, progress=False))
    other = cfg.replace(seed=cfg.seed + 1)
    with pytest.raises(TrainError, match="config differs"):
        train(other, RunOptions(data_dir=data, splits_file=splits, out_dir=tmp_path / "r", epochs=2, resume=True, progress=False))


def test_bad_config_and_data_exit_nonzero_with_message(synth_data, tmp_path):
    data, splits = synth_data
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {channels: [4, 8], strides: [2, 2, 2]}\n")
    r = runner.invoke(app, ["unet", "--config", str(bad), "--data", str(data), "--splits", str(splits), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "bad.yaml" in r.output
    r = runner.invoke(app, ["unet", "--config", "unet", "--data", str(data), "--splits", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "nope.json" in r.output


def test_evaluate_writes_report(synth_data, tiny_config, tmp_path):
    data, splits = synth_data
    cfg = load_config(tiny_config)
    train(cfg, RunOptions(data_dir=data, splits_file=splits, out_dir=tmp_path / "run", epochs=1, progress=False))
    r = run_cli("evaluate", tmp_path / "run" / "best.pt", "--split", "locked", "--data", data, "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["split"] == "locked" and [i["id"] for i in m["images"]] == sorted(load_splits(splits)["locked"])
    # The DSB score is the mean over images of each image's score (those are checked by hand below).
    assert m["dsb_score"] == m["overall"]["dsb"] == pytest.approx(np.mean([i["dsb"] for i in m["images"]]), abs=1e-12)
    assert set(m["per_modality"]) <= {"fluorescence", "brightfield", "histology"}
    assert len(m["images"]) == m["overall"]["n_images"] > 0
    assert (tmp_path / "ev" / "gallery.png").stat().st_size > 1000
    assert "| overall |" in (tmp_path / "ev" / "metrics.md").read_text()
    _model, loaded_cfg, _ = load_model(tmp_path / "run" / "best.pt")
    assert loaded_cfg == cfg.replace(optim=dataclasses.replace(cfg.optim, epochs=1))


def test_evaluation_scores_known_predictions_exactly(tmp_path):
    from nseg_data.sample import Modality, Sample

    from nseg_train.evaluate import evaluate_samples, write_report

    def squares(n: int) -> np.ndarray:
        lab = np.zeros((40, 40 * n), np.uint32)
        for k in range(n):
            lab[10:30, 40 * k + 10:40 * k + 30] = k + 1
        return lab

    a, b = squares(4), squares(2)
    b_pred = b.copy()
    b_pred[0:5, 0:5] = 3  # a false positive
    preds = {"a": np.where(a == 4, 0, a), "b": b_pred}  # "a": one nucleus missed
    samples = [Sample(i, np.zeros((*lab.shape, 3), np.uint8), lab, Modality.FLUORESCENCE, "test")
               for i, lab in (("a", a), ("b", b))]
    result, _ = evaluate_samples(None, samples, None, None, predict=lambda _m, s, _c, _d: preds[s.id])
    write_report(result, tmp_path, title="known")
    m = json.loads((tmp_path / "metrics.json").read_text())
    # Exact matches, so every IoU threshold counts the same: TP / (TP + FP + FN) per image,
    # a: 3 / (3 + 0 + 1), b: 2 / (2 + 1 + 0); F1 = 2TP / (2TP + FP + FN): 6/7 and 4/5.
    by_id = {i["id"]: i for i in m["images"]}
    assert by_id["a"]["dsb"] == pytest.approx(3 / 4, abs=1e-12) and by_id["b"]["dsb"] == pytest.approx(2 / 3, abs=1e-12)
    assert by_id["a"]["f1_50"] == pytest.approx(6 / 7, abs=1e-12) and by_id["b"]["f1_50"] == pytest.approx(4 / 5, abs=1e-12)
    assert m["dsb_score"] == pytest.approx(17 / 24, abs=1e-12)
    assert m["overall"]["f1_50"] == pytest.approx(29 / 35, abs=1e-12)


@pytest.mark.slow
def test_torchrun_two_ranks_end_with_identical_weights(synth_data, tiny_config, tmp_path):
    data, splits = synth_data
    script = tmp_path / "ddp.py"
    script.write_text(
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "from nseg_train.config import load_config\n"
        "from nseg_train.engine import RunOptions, train\n"
        f"cfg = load_config({str(tiny_config)!r})\n"
        f"s = train(cfg, RunOptions(data_dir=Path({str(data)!r}), splits_file=Path({str(splits)!r}), out_dir=Path({str(tmp_path / 'ddp')!r}), epochs=2, device='cpu', progress=False))\n"
        f"Path({str(tmp_path)!r}, f\"rank{{s['rank']}}.json\").write_text(json.dumps(s))\n"
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(script)], capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["weights_sha256"] == r1["weights_sha256"]
    assert (tmp_path / "ddp" / "last.pt").exists()


def test_tune_picks_best_on_val_and_refuses_locked(synth_data, tiny_config, tmp_path):
    from nseg_train.tune import tune_checkpoint

    data, splits = synth_data
    cfg = load_config(tiny_config)
    train(cfg, RunOptions(data_dir=data, splits_file=splits, out_dir=tmp_path / "run", epochs=1, progress=False))
    grid = {"fg_threshold": (0.3, 0.5), "seed_threshold": (0.4, 0.6), "min_size": (4,)}
    r = tune_checkpoint(tmp_path / "run" / "best.pt", data=data, splits=None, out=tmp_path / "tuned.pt", cache=None, grid=grid)
    assert r.best_dsb == max(row["dsb"] for row in r.table) >= r.baseline_dsb - 1e-9
    _m, tuned_cfg, ck = load_model(tmp_path / "tuned.pt")
    assert tuned_cfg.eval.fg_threshold == r.best["fg_threshold"] and "optimizer" not in ck
    with pytest.raises(ValueError, match="locked"):
        tune_checkpoint(tmp_path / "run" / "best.pt", data=data, splits=None, out=tmp_path / "x.pt", cache=None, split="locked")
    assert r.images == len(load_splits(splits)["val"])


def test_an_expert_is_tuned_on_its_modalities_only(synth_data, tiny_config, tmp_path):
    from nseg_train.tune import tune_checkpoint

    data, splits = synth_data
    cfg = load_config(tiny_config)
    expert = cfg.replace(data=dataclasses.replace(cfg.data, modalities=("fluorescence",)))
    train(expert, RunOptions(data_dir=data, splits_file=splits, out_dir=tmp_path / "run", epochs=1, progress=False))
    grid = {"fg_threshold": (0.5,), "seed_threshold": (0.5,), "min_size": (4,)}
    r = tune_checkpoint(tmp_path / "run" / "best.pt", data=data, splits=None, out=tmp_path / "tuned.pt", cache=None, grid=grid)
    sp = load_splits(splits)
    assert r.images == sum(sp.modality[i] == "fluorescence" for i in sp["val"]) < len(sp["val"])


def test_init_starts_from_weights_and_refuses_misfits(synth_data, tiny_config, tmp_path):
    from nseg_data.split import Splits, load_splits, save_splits

    data, splits = synth_data
    cfg = load_config(tiny_config)
    base = dict(data_dir=data, splits_file=splits, progress=False)
    first = train(cfg, RunOptions(out_dir=tmp_path / "a", epochs=1, **base))
    src = tmp_path / "a" / "last.pt"
    a = load_checkpoint(src)

    # lr 1e-30 moves no fp32 weight: the result is the init, so the init was really loaded.
    frozen = cfg.replace(optim=dataclasses.replace(cfg.optim, lr=1e-30))
    b = train(frozen, RunOptions(out_dir=tmp_path / "b", epochs=1, init=src, **base))
    assert b["weights_sha256"] == first["weights_sha256"]
    ck = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ck["init"]["path"] == str(src) and ck["train_seconds"] >= a["train_seconds"]
    fresh = train(frozen, RunOptions(out_dir=tmp_path / "c", epochs=1, **base))
    assert fresh["weights_sha256"] != first["weights_sha256"]

    # Deep supervision adds training-only heads to the same network: a plain UNet starts it.
    deep = frozen.replace(model=dataclasses.replace(cfg.model, deep_supervision=1))
    train(deep, RunOptions(out_dir=tmp_path / "ds", epochs=1, init=src, **base))
    ds = load_checkpoint(tmp_path / "ds" / "last.pt")
    assert any(k.startswith("heads.") for k in ds["model"])
    for k, v in a["model"].items():
        if "running_" not in k and "num_batches" not in k:  # BatchNorm statistics move even at lr 1e-30
            torch.testing.assert_close(ds["model"][f"unet.{k}"], v)

    wider = cfg.replace(model=dataclasses.replace(cfg.model, channels=(8, 16, 32)))
    with pytest.raises(TrainError, match="same architecture"):
        train(wider, RunOptions(out_dir=tmp_path / "d", epochs=1, init=src, **base))

    # A split whose locked set holds images the init trained on would leak the test set.
    s = load_splits(splits)
    swapped = Splits(seed=s.seed, locked_fraction=s.locked_fraction, val_fraction=s.val_fraction,
                     ids={"locked": s["train"], "val": s["val"], "train": s["locked"]}, modality=s.modality)
    save_splits(swapped, tmp_path / "swapped.json")
    with pytest.raises(TrainError, match="leak"):
        train(cfg, RunOptions(data_dir=data, splits_file=tmp_path / "swapped.json", out_dir=tmp_path / "e", epochs=1,
                              init=src, progress=False))
    with pytest.raises(TrainError, match="not found"):
        train(cfg, RunOptions(out_dir=tmp_path / "f", epochs=1, init=tmp_path / "missing.pt", **base))


def test_weight_averaging_validates_the_average_and_resumes_exactly(synth_data, tiny_config, tmp_path):
    """optim.ema: best/last hold the averaged weights, the raw ones travel for --resume, and a
    stopped-and-resumed run ends with the same raw and averaged weights as a straight one."""
    data, splits = synth_data
    cfg = load_config(tiny_config)
    cfg = cfg.replace(optim=dataclasses.replace(cfg.optim, ema=0.9))
    base = dict(data_dir=data, splits_file=splits, progress=False)
    a = train(cfg, RunOptions(out_dir=tmp_path / "a", epochs=2, **base))
    train(cfg, RunOptions(out_dir=tmp_path / "b", epochs=2, stop_after=1, **base))
    b = train(cfg, RunOptions(out_dir=tmp_path / "b", epochs=2, resume=True, **base))
    assert a["weights_sha256"] == b["weights_sha256"]
    ca, cb = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k in ca["model"]:
        torch.testing.assert_close(ca["model"][k], cb["model"][k])
    # The average differs from the raw weights it was made from, and the log scores both.
    assert any(not torch.equal(ca["model"][k], ca["train_model"][k]) for k in ca["model"] if ca["model"][k].is_floating_point())
    rows = list(csv.DictReader((tmp_path / "a" / "log.csv").open()))
    assert all(r["val_dsb"] != "" and r["val_dsb_raw"] != "" for r in rows)
    assert ca["config"]["optim"]["ema"] == 0.9
    # What ships from the run loads as a plain model of the averaged weights.
    model, _, _ = load_model(tmp_path / "a" / "last.pt")
    torch.testing.assert_close(model.state_dict()["model.0.conv.unit0.conv.weight"], ca["model"]["model.0.conv.unit0.conv.weight"])


def test_an_expert_trains_and_validates_on_its_modalities_only(synth_data):
    data, splits_file = synth_data
    splits = load_splits(splits_file)
    opts = RunOptions(data_dir=data, splits_file=splits_file, out_dir=data.parent / "unused")
    _, whole = load_split_samples(opts, ("train", "val"), {})
    _, expert = load_split_samples(opts, ("train", "val"), {}, ("fluorescence",))
    for name in ("train", "val"):
        want = [i for i in splits[name] if splits.modality[i] == "fluorescence"]
        assert want and [s.id for s in expert[name]] == want
        assert {str(s.modality) for s in expert[name]} == {"fluorescence"}
    assert len(expert["train"]) < len(whole["train"])  # the synthetic set mixes modalities
