"""Training on a lab's own annotations: any form nseg-data reads, a split made and kept when none is
given, and `--init default` (the shipped checkpoint of the model kind, or a clear error)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from nseg_data.split import load_splits
from PIL import Image
from typer.testing import CliRunner

from nseg_train import default_checkpoint_path
from nseg_train.checkpoint import load_checkpoint
from nseg_train.cli import app

runner = CliRunner()
TINY_MASKRCNN = Path(__file__).parent / "data" / "tiny-maskrcnn.yaml"
NAMES = [f"cell{i}" for i in range(6)]


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def nuclei_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """96x96 fluorescence-like RGB image with 5 round nuclei in distinct cells of a 3x3 grid, and its labels."""
    yy, xx = np.mgrid[:96, :96]
    lab = np.zeros((96, 96), np.uint16)
    for j, cell in enumerate(rng.choice(9, size=5, replace=False)):
        cy, cx = 16 + 32 * (cell // 3) + rng.uniform(-4, 4), 16 + 32 * (cell % 3) + rng.uniform(-4, 4)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(6, 10) ** 2] = j + 1
    gray = np.clip(20 + 170 * (lab > 0) + rng.normal(0, 6, lab.shape), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2), lab


def write_lab_folder(root: Path, label_form: str, n: int = 6) -> Path:
    """n images with labels beside them: NAME.labels.tif (nseg's own form) or Cellpose NAME_masks.png."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    for name in NAMES[:n]:
        img, lab = nuclei_image(rng)
        Image.fromarray(img).save(root / f"{name}.png")
        if label_form == "labels.tif":
            tifffile.imwrite(root / f"{name}.labels.tif", lab)
        else:  # Cellpose
            Image.fromarray(lab).save(root / f"{name}_masks.png")
    return root


@pytest.mark.parametrize("label_form", ["labels.tif", "cellpose"])
def test_unet_on_a_label_folder_makes_keeps_and_reuses_its_split(label_form, tiny_config, tmp_path):
    data = write_lab_folder(tmp_path / "lab", label_form)
    out = tmp_path / "run"
    common = ("--config", tiny_config, "--data", data, "--out", out, "--no-progress", "--workers", 0, "--device", "cpu")
    r = run_cli("unet", *common, "--epochs", 1)
    assert r.exit_code == 0, r.output
    assert "4 train / 2 val images" in r.output
    sp = load_splits(out / "splits.json")
    # Six images: no locked set, a quarter (rounded: 2) to validate on, the rest to train on.
    assert (len(sp["locked"]), len(sp["val"]), len(sp["train"])) == (0, 2, 4)
    assert sorted(sp["all"]) == NAMES
    assert load_checkpoint(out / "best.pt")["splits_sha256"] == sp.sha256()

    r = run_cli("unet", *common, "--epochs", 2, "--resume")
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(out / "last.pt")
    assert ck["epoch"] == 1 and ck["splits_sha256"] == sp.sha256()
    assert load_splits(out / "splits.json").ids == sp.ids


def test_a_folder_with_one_labelled_image_is_refused_with_its_name(tiny_config, tmp_path):
    data = write_lab_folder(tmp_path / "lab", "labels.tif", n=1)
    r = run_cli("unet", "--config", tiny_config, "--data", data, "--out", tmp_path / "run", "--no-progress")
    assert r.exit_code == 2
    assert str(data) in r.output and "at least 2" in r.output


def test_init_default_names_the_shipped_unet_checkpoint():
    from nseg_train.engine import resolve_init

    assert resolve_init("default", "unet") == default_checkpoint_path("unet")
    assert default_checkpoint_path("unet").is_file()
    assert resolve_init("runs/x/best.pt", "unet") == Path("runs/x/best.pt")
    assert resolve_init(None, "maskrcnn") is None


def test_maskrcnn_on_a_label_folder_and_its_default_checkpoint(tmp_path, monkeypatch):
    import nseg_train.engine as engine

    data = write_lab_folder(tmp_path / "lab", "labels.tif")
    common = ("--config", TINY_MASKRCNN, "--data", data, "--no-progress", "--workers", 0, "--device", "cpu",
              "--limit-train", 2, "--limit-val", 1, "--epochs", 1)
    shipped = tmp_path / "assets" / "maskrcnn-default.pt"
    monkeypatch.setattr(engine, "default_checkpoint_path", lambda kind: shipped)

    # No Mask R-CNN checkpoint is shipped: a clear error, before any data is read.
    r = run_cli("maskrcnn", *common, "--out", tmp_path / "none", "--init", "default")
    assert r.exit_code == 2
    assert "no default maskrcnn checkpoint is shipped" in r.output and str(shipped) in r.output

    r = run_cli("maskrcnn", *common, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "last.pt").is_file()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["kind"] == "maskrcnn"

    # Once the file is there, `--init default` picks it up.
    shipped.parent.mkdir()
    shutil.copy(tmp_path / "run" / "best.pt", shipped)
    assert engine.resolve_init("default", "maskrcnn") == shipped
