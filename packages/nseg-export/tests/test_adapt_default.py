"""The README's "Adapt the default model to your own images", command for command, on a tiny lab folder:
fine-tune the shipped UNet (`--init default`, no split given), export best.pt, segment with the bundle."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import tifffile
from nseg_data.metrics import score_image
from nseg_data.split import load_splits
from nseg_infer.runners.cli import app as infer_app
from nseg_train import default_checkpoint_path
from nseg_train.checkpoint import load_checkpoint
from nseg_train.cli import app as train_app
from PIL import Image
from typer.testing import CliRunner

from nseg_export.cli import app as export_app

runner = CliRunner()


def invoke(app, *args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def write_lab_folder(root: Path, n: int = 6) -> dict[str, np.ndarray]:
    """n 96x96 fluorescence-like images, 5 round nuclei each, as NAME.png + NAME.labels.tif."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:96, :96]
    root.mkdir(parents=True)
    truth = {}
    for i in range(n):
        lab = np.zeros((96, 96), np.uint16)
        for j, cell in enumerate(rng.choice(9, size=5, replace=False)):
            cy, cx = 16 + 32 * (cell // 3) + rng.uniform(-4, 4), 16 + 32 * (cell % 3) + rng.uniform(-4, 4)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(6, 10) ** 2] = j + 1
        gray = np.clip(20 + 170 * (lab > 0) + rng.normal(0, 6, lab.shape), 0, 255).astype(np.uint8)
        Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(root / f"lab{i}.png")
        tifffile.imwrite(root / f"lab{i}.labels.tif", lab)
        truth[f"lab{i}"] = lab
    return truth


def test_finetune_default_export_and_run(tmp_path):
    lab = tmp_path / "my_images"
    truth = write_lab_folder(lab)
    run, bundle, results = tmp_path / "runs" / "mine", tmp_path / "bundles" / "mine", tmp_path / "results"

    r = invoke(train_app, "unet", "--config", "unet-finetune", "--init", "default", "--data", lab, "--epochs", 1,
               "--out", run, "--device", "cpu", "--workers", 0, "--no-progress")
    assert "4 train / 2 val images" in r.output
    sp = load_splits(run / "splits.json")
    assert not sp["locked"] and sorted(sp["all"]) == sorted(truth)
    ck = load_checkpoint(run / "best.pt")
    assert ck["init"]["path"] == str(default_checkpoint_path()) and ck["splits_sha256"] == sp.sha256()
    assert (run / "last.pt").is_file()

    invoke(export_app, "onnx", run / "best.pt", "--out", bundle)
    assert json.loads((bundle / "metadata.json").read_text())["training"]["splits_sha256"] == sp.sha256()

    # The label files beside the images are skipped as products; only the 6 images are segmented.
    invoke(infer_app, "run", lab, "--out", results, "--model", bundle, "--device", "cpu")
    with (results / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(truth)
    f1 = [score_image(gt, tifffile.imread(results / f"{name}.labels.tif")).f1_50 for name, gt in truth.items()]
    # Isolated bright nuclei: the default model finds nearly all of them, and one short epoch of
    # fine-tuning keeps that; a chain that lost the weights or the thresholds finds next to none.
    assert np.mean(f1) >= 0.8, f1
