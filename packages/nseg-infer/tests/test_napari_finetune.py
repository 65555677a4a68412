"""The Fine-tune widget's helpers, headless (no Qt, no torch): which layers pair up, how they are
written for `nseg-train adapt`, the progress lines it reads back, and what it says when the
training packages are missing. The widget in a real window is test_napari_window.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile
from nseg_data.dataset import open_dataset

from nseg_infer.runners import napari_finetune as ft

napari = pytest.importorskip("napari", reason="the napari extra is not installed")


def blobs(h: int = 64, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    lab = np.zeros((h, w), np.uint16)
    lab[(yy - 20) ** 2 + (xx - 20) ** 2 < 64] = 1
    lab[(yy - 40) ** 2 + (xx - 55) ** 2 < 81] = 2
    return (lab > 0).astype(np.uint16) * 3000 + 200, lab


def test_labels_layers_pair_with_their_image_by_name_and_size():
    from napari.components import ViewerModel

    v = ViewerModel()
    img, lab = blobs()
    v.add_image(img, name="a")
    v.add_image(np.dstack([img.astype(np.uint8)] * 3), name="b", rgb=True)
    v.add_labels(lab, name="a nuclei")
    v.add_labels(lab, name="b nuclei")
    v.add_labels(lab, name="c nuclei")  # no image "c"
    v.add_labels(lab[:32], name="a nuclei (default)")  # not a Segment widget layer
    v.add_labels(lab, name="other")
    pairs = ft.corrected_pairs(v.layers)
    assert [(i.name, lab_.name) for i, lab_ in pairs] == [("a", "a nuclei"), ("b", "b nuclei")]
    v.layers["a nuclei"].data = lab[:32]  # a size that no longer matches its image
    assert [i.name for i, _ in ft.corrected_pairs(v.layers)] == ["b"]


def test_layers_are_written_as_a_label_folder_adapt_reads(tmp_path):
    img, lab = blobs()
    rgb = ft.rgb8("a", img, rgb=False)
    assert rgb.shape == (64, 80, 3) and rgb.dtype == np.uint8 and rgb.max() == 255 and rgb.min() == 0
    folder = ft.write_pairs([("a", rgb, lab), ("b", ft.rgb8("b", rgb, rgb=True), lab)], tmp_path / "images")
    res = open_dataset(folder)
    assert not res.errors and sorted(s.id for s in res.samples) == ["a", "b"]
    assert np.array_equal(tifffile.imread(folder / "a.labels.tif"), lab)
    with pytest.raises(ValueError, match="'e nuclei'"):
        ft.write_pairs([("e", rgb, np.zeros_like(lab))], tmp_path / "empty")
    with pytest.raises(ValueError, match="'stack'"):
        ft.rgb8("stack", np.zeros((3, 8, 8)), rgb=False)


def test_each_fine_tune_gets_its_own_run_folder(tmp_path):
    assert ft.next_run(tmp_path) == tmp_path / "finetune-001"
    (tmp_path / "finetune-001").mkdir()
    assert ft.next_run(tmp_path) == tmp_path / "finetune-002"


def test_progress_lines_of_the_command_are_parsed():
    s = ft.parse_step("step 40/344 loss 0.7970 (2.10 s/step, 10.6 min left)\n")
    assert (s.step, s.total, s.loss, s.minutes_left) == (40, 344, 0.797, 10.6)
    assert ft.parse_step("preparing the images and the replay set...") is None


def test_without_the_training_packages_the_widget_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nseg_train" else real(name, *a))
    msg = ft.missing_training()
    assert "nseg-train" in msg and "pip install" in msg
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: Path(name))
    assert ft.missing_training() is None


def test_the_widget_module_never_imports_torch():
    import subprocess
    import sys

    code = "import sys, nseg_infer.runners.napari_finetune as m; m.missing_training(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
