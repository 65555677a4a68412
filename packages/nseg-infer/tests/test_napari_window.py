"""The napari plugin in a real napari window (Qt under Xvfb): tools/napari_window.py segments a
3-channel OME-TIFF with 0.325 µm pixels through the dock widget and opens `nseg-infer run`'s labels
beside the image opened by napari's own reader. Skipped (with the reason) where napari, a Qt
binding, Xvfb or Qt's system libraries are missing; tools/setup.sh installs none of the last three
(see the README's napari section)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "tools" / "napari_window.py"
QT_LIBS = ("xvfb libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 "
           "libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libgl1 libegl1 libdbus-1-3")


@pytest.fixture(scope="module")
def display():
    for mod in ("napari", "qtpy", "PyQt5"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (a real window needs napari and a Qt binding: pip install pyqt5)")
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip(f"Xvfb is not installed (Debian: apt-get install {QT_LIBS})")
    free = [n for n in range(90, 140) if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists()]
    if not free:
        pytest.skip("no free X display number for Xvfb")
    n = free[0]
    proc = subprocess.Popen([xvfb, f":{n}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not Path(f"/tmp/.X11-unix/X{n}").exists():  # Xvfb creates its socket once it serves
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"Xvfb did not start: {proc.stderr.read().decode(errors='replace')[-300:]}")
            time.sleep(0.05)
        env = {**os.environ, "DISPLAY": f":{n}", "QT_QPA_PLATFORM": "xcb"}
        probe = subprocess.run([sys.executable, "-c", "from qtpy.QtWidgets import QApplication; QApplication([])"],
                               env=env, capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            pytest.skip(f"Qt cannot open a window (missing system libraries? Debian: {QT_LIBS}): "
                        f"{probe.stderr.strip()[-300:]}")
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_widget_and_reader_in_a_real_window(display, tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--side", "1024"], env=display,
                         capture_output=True, text=True, timeout=480, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads((tmp_path / "report.json").read_text())
    w, rd = r["widget"], r["reader"]
    # The widget's labels and the reader's labels coincide with the image napari's own reader opened.
    assert w["extent_labels"] == w["extent_image"] == [[0.0, 0.0], [1023.0, 1023.0]]
    assert rd["extent_labels"] == rd["extent_image"] == w["extent_image"]
    assert rd["extent_outlines"] == [[-0.5, -0.5], [1023.5, 1023.5]]  # polygons along the pixel edges
    # The pixel size is kept exactly, in metadata and in the µm measurements.
    assert w["pixel_size_um"] == rd["pixel_size_um"] == [0.325, 0.325]
    assert w["area_um2_per_px"] == pytest.approx(0.325 ** 2, rel=1e-3)
    assert w["n_nuclei"] == rd["n_nuclei"] == rd["n_outlines"] > 200
    # The segmentation ran in a worker thread: the GUI's timer kept firing and the progress bar
    # moved through intermediate values to its end.
    assert w["timer_ticks_during_run"] >= 5
    vals = w["progress_values"]
    assert vals == sorted(vals) and vals[-1] == w["progress_max"] > 1
    assert any(0 < v < w["progress_max"] for v in vals), vals


def test_correct_and_adapt_loop_in_a_real_window(display, tmp_path):
    """tools/napari_finetune_window.py: segment three H&E images, correct the labels with napari's
    label editing, cancel a fine-tune, run one to its end, and get the images segmented again
    with the exported bundle. Needs nseg-train and nseg-export (torch) besides the window."""
    for mod in ("torch", "nseg_train", "nseg_export"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (the fine-tune needs nseg-train and nseg-export)")
    script = REPO / "tools" / "napari_finetune_window.py"
    run = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--steps", "4"], env=display,
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads((tmp_path / "report.json").read_text())
    # The corrections made the labels better than the default's.
    assert all(c["corrected_dsb"] > c["default_dsb"] and c["erased"] + c["painted"] > 0 for c in r["correction"].values())
    # Without nseg-train the widget says what to install and cannot start.
    assert "pip install" in r["without_training"]["status"] and not r["without_training"]["button_enabled"]
    # Cancel stops a fine-tune: no adapted layers appear.
    assert r["cancel"]["status"].startswith("cancelled") and not any("(adapted)" in n for n in r["cancel"]["layers"])
    f = r["finetune"]
    # Training ran in a worker thread (the GUI's timer kept firing), with step progress to the end.
    assert f["timer_ticks"] >= 5 and f["progress_values"][-1] == f["progress_max"] == 4
    assert f["progress_values"] == sorted(f["progress_values"]) and len(f["progress_values"]) > 2
    assert f["kept"] in ("adapted", "default") and f"kept the {f['kept']} model" in f["status"]
    # The bundle the widget exported gives its adapted layers exactly, where their images are.
    for a in r["adapted"].values():
        assert a["equals_runtime"] and a["translate"] == a["image_translate"] and a["n_nuclei"] > 0
