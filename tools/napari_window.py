"""nseg's napari plugin in a real napari window: the widget, its result, a labels file beside its image.

    python tools/napari_window.py --out OUT [--side 2048] [--screenshots docs/napari]

Needs a display (Xvfb under a headless machine: `xvfb-run -a python tools/napari_window.py ...`),
napari with a Qt backend (`pip install pyqt5`) and the nseg-infer napari extra. It

1. writes OUT/plate.ome.tif: a 3-channel (DAPI, GFP, Cy5) CYX OME-TIFF with 0.325 µm pixels whose
   DAPI channel is a mosaic of the repository's DSB fluorescence sample images;
2. opens it with napari's own reader (pixels), docks "Segment nuclei", sets channel 0 and the
   pixel size, presses Segment and keeps the Qt event loop turning until the worker thread is
   done, counting timer ticks and progress values on the way (a frozen viewer ticks no timer);
3. segments the same file with `nseg-infer run`'s Predictor and opens NAME.labels.tif with nseg's
   reader beside napari's image layer;
4. writes OUT/report.json (extents of each layer in world coordinates, pixel sizes, ticks,
   progress) and, with --screenshots, the window as PNGs: widget-running.png, widget-result.png,
   labels-beside-image.png.

tests/test_napari_window.py runs it on a smaller image under Xvfb and checks the report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample" / "stage1_train"
FLUORESCENCE = ("2f929b067a59f88530b6bfa6f6889bc3a38adf88d594895973d1c8b2549fd93d",
                "3bfd6bb152310f93daa6f4e1867c10572946e874b3a30c9ba8e0fcdeb590300b",
                "619429303c1af7540916509fe7900cf483eba4391b06aac87ff7f66ca1ab6483",
                "693bc64581275f04fc456da74f031d583733360a1f6032fa38b3fbf592ff4352")
PIXEL_UM = 0.325


def make_plate(path: Path, side: int) -> np.ndarray:
    """A CYX uint16 OME-TIFF: DAPI = a mosaic of the sample's fluorescence images (flipped and
    rotated so neighbours differ), GFP and Cy5 = smooth cytoplasm-like signals around nuclei."""
    import tifffile
    from PIL import Image
    from scipy import ndimage as ndi

    tiles = [np.asarray(Image.open(SAMPLE / i / "images" / f"{i}.png").convert("L"), np.float32) for i in FLUORESCENCE]
    n = -(-side // 256)
    rows = []
    for r in range(n):
        row = [np.rot90(tiles[(r * n + c) % 4][:256, :256], k=(r + c) % 4) for c in range(n)]
        rows.append(np.concatenate([np.flip(t, axis=(r * 3 + c) % 2) for c, t in enumerate(row)], axis=1))
    dapi = np.concatenate(rows, axis=0)[:side, :side]
    gfp = ndi.gaussian_filter(dapi, 6) * 3 + 10
    cy5 = ndi.gaussian_filter(np.roll(dapi, 40, axis=1), 12) * 2 + 5
    stack = (np.stack([dapi, gfp, cy5]) * 64).clip(0, 65535).astype(np.uint16)
    tifffile.imwrite(path, stack, ome=True, metadata={
        "axes": "CYX", "PhysicalSizeX": PIXEL_UM, "PhysicalSizeY": PIXEL_UM, "PhysicalSizeXUnit": "µm",
        "PhysicalSizeYUnit": "µm", "Channel": {"Name": ["DAPI", "GFP", "Cy5"]}})
    return stack


def world_extent(layer) -> list[list[float]]:
    """(min, max) corners of a layer's last two axes in world coordinates (napari's extent)."""
    e = np.asarray(layer.extent.world, float)[:, -2:]
    return e.tolist()


def show_dapi(viewer, image) -> None:
    """napari's reader shows the CYX file as a stack with a channel slider: show DAPI, scaled."""
    viewer.dims.set_current_step(0, 0)
    lo, hi = np.percentile(image.data[0], (1, 99.7))
    image.contrast_limits = (float(lo), float(hi))


def open_napari(out: Path):
    """napari with its settings in a file of this run (the user's own stay untouched) and pop-up
    notifications off: a notice about the Qt binding would cover the canvas in every screenshot."""
    import os

    os.environ["NAPARI_CONFIG"] = str(out / "napari-settings.yaml")
    import napari
    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "none"
    return napari


def screenshot(viewer, folder: Path | None, name: str) -> None:
    """The whole window as `folder/name`, after closing napari's toasts (its notice about the PyQt5
    binding would cover the canvas); nothing without a folder."""
    from qtpy.QtWidgets import QApplication

    for w in QApplication.instance().allWidgets():
        if type(w).__name__ == "NapariQtNotification":
            w.close()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(folder / name), canvas_only=False, flash=False)


def wait_until(app, done, timeout: float, on_turn=None) -> None:
    t0 = time.perf_counter()
    while not done():
        app.processEvents()
        if on_turn is not None:
            on_turn()
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"not done after {timeout} s")
        time.sleep(0.005)  # yield the CPU to the worker thread between event-loop turns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--side", type=int, default=2048, help="image side in pixels")
    ap.add_argument("--screenshots", type=Path, default=None, help="folder for the window's PNGs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    napari = open_napari(args.out)
    from nseg_infer.engine.predictor import Predictor
    from nseg_infer.runners.file_config import FileConfig
    from nseg_infer.runners.files import FileRunner
    from nseg_infer.sources.channels import ChannelChoice
    from nseg_infer.sources.options import InputOptions
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    plate = args.out / "plate.ome.tif"
    make_plate(plate, args.side)
    report: dict = {"image": {"path": plate.name, "side": args.side, "pixel_size_um": PIXEL_UM}}

    def shot(viewer, name: str) -> None:
        screenshot(viewer, args.screenshots, name)

    # -- 1. the widget on an image opened by napari's own reader -------------------------------
    viewer = napari.Viewer(title="nseg in napari", show=True)
    viewer.window.resize(1300, 850)
    app = QApplication.instance()
    (image,) = viewer.open(str(plate), plugin="napari")
    show_dapi(viewer, image)
    _, widget = viewer.window.add_plugin_dock_widget("nseg-infer", "Segment nuclei")
    w = {sub.label or sub.text: sub for sub in widget}
    w["image"].value = image
    w["channel"].value = 0
    w["pixel size (µm)"].value = str(PIXEL_UM)
    ticks = {"n": 0}
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.__setitem__("n", ticks["n"] + 1))
    timer.start(20)
    seen: list[int] = []
    shot_taken = {"done": False}

    def on_turn() -> None:
        v = int(w["progress"].value)
        if not seen or seen[-1] != v:
            seen.append(v)
        if not shot_taken["done"] and 0 < v < w["progress"].max:
            shot(viewer, "widget-running.png")
            shot_taken["done"] = True

    t0 = time.perf_counter()
    w["Segment"].native.click()
    ticks_at_start = ticks["n"]
    wait_until(app, lambda: widget.worker is None, 600, on_turn)
    seconds = time.perf_counter() - t0
    timer.stop()
    labels = viewer.layers[f"{image.name} nuclei"]
    rows = labels.metadata["measurements"]
    viewer.layers.selection.active = labels
    viewer.camera.center = (args.side * 0.35, args.side * 0.35)
    viewer.camera.zoom = 700 / (args.side * 0.5)
    report["widget"] = {
        "seconds": round(seconds, 2), "timer_ticks_during_run": ticks["n"] - ticks_at_start,
        "progress_values": seen, "progress_max": int(w["progress"].max), "status": w["status"].value,
        "n_nuclei": int(labels.data.max()), "pixel_size_um": list(labels.metadata["pixel_size_um"]),
        "area_um2_per_px": rows[0]["area_um2"] / rows[0]["area"] if rows else None,
        "extent_image": world_extent(image), "extent_labels": world_extent(labels),
    }
    shot(viewer, "widget-result.png")
    viewer.close()

    # -- 2. nseg-infer run's labels file opened beside its image -------------------------------
    res = FileRunner(Predictor(None), FileConfig(InputOptions(ChannelChoice(channel=0)))).process_file(plate, args.out)
    if not res.ok:
        raise SystemExit(res.error)
    viewer = napari.Viewer(title="nseg outputs in napari", show=True)
    viewer.window.resize(1300, 850)
    (image,) = viewer.open(str(plate), plugin="napari")
    show_dapi(viewer, image)
    lab_layers = viewer.open(str(args.out / "plate.labels.tif"), plugin="nseg-infer")
    labels, outlines = lab_layers
    labels.opacity = 0.45
    report["reader"] = {
        "layers": [ly.name for ly in viewer.layers], "n_nuclei": int(labels.data.max()),
        "pixel_size_um": list(labels.metadata["pixel_size_um"]), "n_outlines": len(outlines.data),
        "extent_image": world_extent(image), "extent_labels": world_extent(labels),
        "extent_outlines": world_extent(outlines),
    }
    side = args.side
    viewer.camera.center = (side * 0.3, side * 0.3)
    viewer.camera.zoom = 900 / (side * 0.45)
    wait_until(app, lambda: True, 5)
    shot(viewer, "labels-beside-image.png")
    viewer.close()
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
