"""`nseg-train compare` on two tiny finished runs (a Mask R-CNN and a UNet)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nseg_data.split import load_splits, make_splits, save_splits
from PIL import Image
from typer.testing import CliRunner

from nseg_train.cli import app

TINY_MASKRCNN = Path(__file__).parent / "data" / "tiny-maskrcnn.yaml"

runner = CliRunner()

UNET = """
name: tiny-unet
data: {crop_size: 64, crops_per_image: 2, num_workers: 0}
model: {kind: unet, targets: fg_dist, channels: [4, 8, 16], strides: [2, 2], num_res_units: 1}
optim: {epochs: 1, batch_size: 4, warmup_epochs: 0}
eval: {every: 1, tile: 128, halo: 16, min_size: 4}
"""


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def two_runs(synth_data, tmp_path_factory):
    data, splits = synth_data
    base = tmp_path_factory.mktemp("runs")
    (base / "u.yaml").write_text(UNET)
    for kind, cfg, name in (("maskrcnn", TINY_MASKRCNN, "mrcnn"), ("unet", base / "u.yaml", "unet")):
        r = run(kind, "--config", cfg, "--data", data, "--splits", splits, "--out", base / name, "--epochs", 1,
                "--limit-train", 2, "--limit-val", 1, "--workers", 0, "--no-progress", "--device", "cpu")
        assert r.exit_code == 0, r.output
    return data, splits, base / "mrcnn", base / "unet"


def test_compare_writes_table_and_figures(two_runs, tmp_path):
    data, splits, mrcnn, unet = two_runs
    out = tmp_path / "cmp"
    r = run("compare", mrcnn, unet, "--split", "locked", "--data", data, "--out", out, "--device", "cpu", "--gallery", 3)
    assert r.exit_code == 0, r.output
    md = (out / "comparison.md").read_text()
    for text in ("| mrcnn | maskrcnn (tiny-maskrcnn)", "| unet | unet (tiny-unet)", "DSB", "F1@0.5", "F1@0.75", "AJI", "Dice",
                 "inference s/MP", "### fluorescence", "### histology", "measured on:"):
        assert text in md, text
    res = json.loads((out / "comparison.json").read_text())
    n_locked = len(load_splits(splits)["locked"])
    assert [x["name"] for x in res["runs"]] == ["mrcnn", "unet"]
    for x in res["runs"]:
        assert x["overall"]["n_images"] == n_locked and x["params"] > 0 and x["train_seconds"] > 0
        assert x["seconds_per_megapixel"] > 0 and set(x["per_modality"]) >= {"fluorescence"}
    assert res["runs"][0]["params"] > 10 * res["runs"][1]["params"]
    for name, min_width in (("comparison.png", 4 * 3.2 * 90 - 10), ("curves.png", 2 * 4.2 * 90 - 10)):
        with Image.open(out / name) as im:
            assert im.width >= min_width, name  # one column per run (plus image and truth in the gallery)


def test_compare_refuses_images_a_run_trained_on(two_runs, tmp_path):
    data, splits, mrcnn, unet = two_runs
    sp = load_splits(splits)
    moved = make_splits(dict(sp.modality), seed=sp.seed + 1, locked_fraction=0.2, val_fraction=0.3)
    save_splits(moved, tmp_path / "other.json")
    assert set(moved["locked"]) - set(sp["locked"])  # the new locked split holds training images
    r = run("compare", mrcnn, unet, "--split", "locked", "--splits", tmp_path / "other.json", "--data", data,
            "--out", tmp_path / "x", "--device", "cpu")
    assert r.exit_code == 2 and "train/val split" in r.output


def test_run_names_and_init_chain(tmp_path):
    import torch

    from nseg_train.checkpoint import FORMAT, init_epochs
    from nseg_train.compare import run_names

    a, b = tmp_path / "x" / "unet", tmp_path / "y" / "unet"
    names = run_names([(a / "best.pt", a), (b / "best.pt", b), (tmp_path / "ft" / "tuned.pt", tmp_path / "ft")])
    assert names == ["x/unet", "y/unet", "ft/tuned"]
    first = tmp_path / "first.pt"
    torch.save({"format": FORMAT, "epoch": 31, "init": None}, first)
    second = tmp_path / "second.pt"
    torch.save({"format": FORMAT, "epoch": 9, "init": {"path": str(first)}}, second)
    assert init_epochs({"init": {"path": str(second)}}) == 10 + 32
    assert init_epochs({"init": {"epochs": 7, "path": "gone.pt"}}) == 7
    assert init_epochs({"init": None}) == 0
    # A file replaced by its own descendant (the shipped default after a fine-tune of it): the
    # recorded count wins, and without one a path seen twice ends the chain.
    loop = tmp_path / "loop.pt"
    torch.save({"format": FORMAT, "epoch": 4, "init": {"path": str(loop), "epochs": 40}}, loop)
    assert init_epochs({"init": {"path": str(loop), "epochs": 45}}) == 45
    torch.save({"format": FORMAT, "epoch": 4, "init": {"path": str(loop)}}, loop)
    assert init_epochs({"init": {"path": str(loop)}}) == 5
