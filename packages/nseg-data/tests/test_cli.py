"""The `nseg-data` commands end to end on synthetic data."""

from __future__ import annotations

import json

import numpy as np
import tifffile
from nseg_data_synth import expected_labels, kaggle_files, write_files
from typer.testing import CliRunner

from nseg_data.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def many_samples(tmp_path):
    return write_files(tmp_path / "ds", kaggle_files(tuple(f"s{i}" for i in range(6))))


def test_ingest_reports_cold_and_cached(kaggle_dir, tmp_path):
    r = run("ingest", kaggle_dir, "--cache", tmp_path / "c", "--json", tmp_path / "t.json")
    assert r.exit_code == 0, r.output
    assert "first load (cold)" in r.output and "cached load" in r.output
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["samples"] == 2 and t["first_cached"] == 0
    r2 = run("ingest", kaggle_dir, "--cache", tmp_path / "c")
    assert "partly cached (2/2" in r2.output


def test_ingest_fails_on_bad_input(kaggle_dir, tmp_path):
    (kaggle_dir / "img_a" / "masks" / "m0.png").write_bytes(b"junk")
    r = run("ingest", kaggle_dir, "--cache", tmp_path / "c")
    assert r.exit_code == 1
    assert "m0.png" in r.output


def test_ingest_missing_masks_folder(kaggle_dir, tmp_path):
    import shutil

    shutil.rmtree(kaggle_dir / "img_b" / "masks")
    r = run("ingest", kaggle_dir, "--cache", tmp_path / "c")
    assert r.exit_code == 1 and "img_b/masks" in r.output
    r = run("ingest", kaggle_dir, "--cache", tmp_path / "c", "--allow-unlabelled")
    assert r.exit_code == 0 and "samples: 2" in r.output
    assert run("ingest", kaggle_dir, "--cache", tmp_path / "c").exit_code == 1  # the cache does not hide it


def test_stats(kaggle_dir, tmp_path):
    r = run("stats", kaggle_dir, "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "s.json").read_text())
    assert d["modalities"]["all"]["nuclei"] == 6 and d["modalities"]["fluorescence"]["images"] == 2


def test_split_writes_table_and_refuses_to_move_locked(tmp_path):
    ds = many_samples(tmp_path)
    out = tmp_path / "splits.json"
    r = run("split", ds, "--out", out)
    assert r.exit_code == 0, r.output
    assert "locked" in r.output and "fluorescence" in r.output
    d = json.loads(out.read_text())
    assert sum(len(v) for v in d["splits"].values()) == 6
    assert run("split", ds, "--out", out).exit_code == 0  # same result: fine
    r = run("split", ds, "--out", out, "--seed", "99")
    assert r.exit_code == 1 and "--force" in r.output
    assert run("split", ds, "--out", out, "--seed", "99", "--force").exit_code == 0


def test_qc_with_fixes(kaggle_dir, tmp_path):
    r = run("qc", kaggle_dir, "--out", tmp_path / "qc", "--fix", "fill-holes", "--fix", "drop-tiny",
            "--fixed-out", tmp_path / "fixed")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "qc" / "qc.json").read_text())["n_samples"] == 2
    assert (tmp_path / "qc" / "qc_gallery.png").exists()
    # The fixed output is itself a readable dataset.
    assert run("stats", tmp_path / "fixed").exit_code == 0
    lab = tifffile.imread(tmp_path / "fixed" / "img_a.labels.tif")
    assert np.array_equal(lab, expected_labels(0))
    assert run("qc", kaggle_dir, "--out", tmp_path / "q2", "--fix", "polish", "--fixed-out", tmp_path / "f").exit_code != 0


def test_coco_per_split(tmp_path):
    ds = many_samples(tmp_path)
    splits = tmp_path / "splits.json"
    assert run("split", ds, "--out", splits).exit_code == 0
    r = run("coco", ds, "--splits", splits, "--out", tmp_path / "coco")
    assert r.exit_code == 0, r.output
    total = sum(len(json.loads((tmp_path / "coco" / f"{n}.json").read_text())["images"]) for n in ("train", "val", "locked"))
    assert total == 6


def test_coco_missing_splits_file_named(kaggle_dir, tmp_path):
    r = run("coco", kaggle_dir, "--splits", tmp_path / "nope.json", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "nope.json" in r.output


def test_score_json_and_missing_predictions(tmp_path):
    ds = many_samples(tmp_path)
    pred = tmp_path / "pred"
    pred.mkdir()
    for sid, seed in (("s0", 0), ("s1", 1), ("s2", 0)):
        tifffile.imwrite(pred / f"{sid}.labels.tif", expected_labels(seed).astype(np.uint16))
    tifffile.imwrite(pred / "s3.labels.tif", np.zeros((24, 32), np.uint16))  # predicted nothing
    out = tmp_path / "score.json"
    r = run("score", pred, "--gt", ds, "--json", out)
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    # s0, s1, s2 perfect; s3 empty; s4, s5 missing -> scored as empty.
    assert d["dsb_score"] == 0.5
    assert d["missing_predictions"] == ["s4", "s5"]
    assert d["per_modality"]["fluorescence"]["n_images"] == 6
    assert [row["id"] for row in d["images"] if row["missing"]] == ["s4", "s5"]
    assert "missing predictions" in r.output


def test_score_one_split(tmp_path):
    ds = many_samples(tmp_path)
    splits = tmp_path / "splits.json"
    run("split", ds, "--out", splits)
    locked = json.loads(splits.read_text())["splits"]["locked"]
    pred = tmp_path / "pred"
    pred.mkdir()
    for sid in locked:
        tifffile.imwrite(pred / f"{sid}.labels.tif", expected_labels(int(sid[1:]) % 2).astype(np.uint16))
    out = tmp_path / "s.json"
    r = run("score", pred, "--gt", ds, "--split", "locked", "--splits", splits, "--json", out)
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["dsb_score"] == 1.0 and d["overall"]["n_images"] == len(locked) and d["split"] == "locked"


def test_score_prediction_of_wrong_size_names_file(kaggle_dir, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    tifffile.imwrite(pred / "img_a.labels.tif", np.zeros((5, 5), np.uint16))
    r = run("score", pred, "--gt", kaggle_dir)
    assert r.exit_code == 2 and "img_a.labels.tif" in r.output
