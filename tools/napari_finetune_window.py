"""The correct-and-adapt loop in a real napari window: segment, correct, fine-tune, segment again.

    python tools/napari_finetune_window.py --out OUT [--steps 25] [--screenshots docs/napari]

Needs a display (Xvfb under a headless machine), napari with a Qt backend, the nseg-infer napari
extra, and nseg-train + nseg-export (torch) for the fine-tune itself. It

1. opens three H&E images (the histology images of nseg-train's replay set, CC0, or the first
   three of `--images`, a label folder) side by side as image layers, and segments each with the Segment widget (the default model);
2. corrects each `NAME nuclei` layer with napari's own label editing (`Labels.data_setitem`, what
   the paint, fill and erase tools call, with undo): nuclei the model missed are painted in from
   the images' annotations, objects that match no nucleus are erased; a copy of the default's
   labels is kept as `NAME nuclei (default)`;
3. makes a Fine-tune widget as a machine without nseg-train sees it (it must say what to
   install), docks "Fine-tune", selects the corrected layers, starts a long fine-tune and presses Cancel
   after its first steps (the widget must say it was cancelled), then runs `--steps` steps with the
   Qt event loop turning (timer ticks and progress values counted: a frozen viewer ticks no
   timer);
4. checks the result: the bundle folder loads in the runtime and gives the `NAME nuclei (adapted)`
   layers' labels exactly; writes OUT/report.json (statuses, ticks, progress, which model was kept,
   DSB of the default and adapted labels against the annotations) and, with --screenshots, the
   window as finetune-correction.png, finetune-running.png, finetune-before.png and
   finetune-after.png.

tests/test_napari_finetune_window.py (nseg-infer) runs it under Xvfb and checks the report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from napari_window import open_napari, screenshot, wait_until  # noqa: E402

REPLAY = REPO / "packages" / "nseg-train" / "src" / "nseg_train" / "assets" / "replay"
GAP = 16  # pixels between images laid side by side


def he_images(folder: Path | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Three H&E images with their annotations: the replay set's, or the first three of a label folder."""
    from nseg_data.dataset import open_dataset

    res = open_dataset(folder or REPLAY)
    he = sorted((s for s in res.samples if str(s.modality) == "histology"), key=lambda s: s.id)[:3]
    return [(f"he{i + 1}", s.image, s.labels) for i, s in enumerate(he)]


def correction(pred: np.ndarray, truth: np.ndarray) -> tuple[list[tuple[tuple, int]], int, int]:
    """The edits that turn `pred` into a corrected segmentation: (pixels, new label) pairs that
    erase the objects matching no nucleus (IoU >= 0.5) and paint in the nuclei no object matches.
    Returns (edits, objects erased, nuclei painted)."""
    matched_pred, matched_gt = set(), set()
    for g in (int(v) for v in np.unique(truth) if v):
        gm = truth == g
        ids, counts = np.unique(pred[gm], return_counts=True)
        for p, c in zip(ids.tolist(), counts.tolist(), strict=True):
            if p and c / (gm.sum() + (pred == p).sum() - c) >= 0.5:
                matched_pred.add(p)
                matched_gt.add(g)
    erase = [(np.nonzero(pred == p), 0) for p in (int(v) for v in np.unique(pred) if v) if p not in matched_pred]
    missed = [g for g in (int(v) for v in np.unique(truth) if v) if g not in matched_gt]
    first = int(pred.max()) + 1
    paint = [(np.nonzero(truth == g), first + i) for i, g in enumerate(missed)]
    return erase + paint, len(erase), len(paint)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--screenshots", type=Path, default=None)
    ap.add_argument("--images", type=Path, default=None, help="a label folder whose first three H&E images to use "
                    "(default: the replay set's)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds the fine-tune may take")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    napari = open_napari(args.out)
    from nseg_data.metrics import dsb_score
    from nseg_infer.engine.bundle import load_bundle
    from nseg_infer.engine.predictor import Predictor
    from nseg_infer.runners.api import segment_with
    from nseg_infer.sources.options import InputOptions
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    def shot(viewer, name: str) -> None:
        QApplication.instance().processEvents()
        viewer.reset_view()  # every image in view, at the canvas's current size
        screenshot(viewer, args.screenshots, name)

    viewer = napari.Viewer(title="nseg: correct and adapt", show=True)
    viewer.window.resize(1400, 800)
    app = QApplication.instance()
    images, truths, x = {}, {}, 0
    for name, img, truth in he_images(args.images):
        images[name] = viewer.add_image(img, name=name, rgb=True, translate=(0, x))
        truths[name] = truth
        x += img.shape[1] + GAP
    _, seg = viewer.window.add_plugin_dock_widget("nseg-infer", "Segment nuclei")
    sw = {sub.label or sub.text: sub for sub in seg}
    for layer in images.values():
        sw["image"].value = layer
        sw["Segment"].native.click()
        wait_until(app, lambda: seg.worker is None, 300)
    report: dict = {"images": {n: list(ly.data.shape) for n, ly in images.items()}, "correction": {}}

    # -- 2. corrections with napari's own label editing ---------------------------------------
    for name in images:
        lab = viewer.layers[f"{name} nuclei"]
        pred = np.array(lab.data)
        viewer.add_labels(pred.copy(), name=f"{name} nuclei (default)", translate=lab.translate, visible=False)
        edits, erased, painted = correction(pred, truths[name])
        for idx, value in edits:
            lab.data_setitem(idx, value)
        report["correction"][name] = {"erased": erased, "painted": painted,
                                      "default_dsb": dsb_score(truths[name], pred),
                                      "corrected_dsb": dsb_score(truths[name], np.asarray(lab.data))}
    viewer.reset_view()
    shot(viewer, "finetune-correction.png")

    # -- 3. the Fine-tune widget: cancel once, then a fine-tune to its end ------------------------
    # First as a machine without torch sees it: the widget must say what to install.
    import importlib.util

    from nseg_infer.runners import napari_finetune

    real_find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name == "nseg_train" else real_find_spec(name, *a)
    try:
        bare = napari_finetune.FinetuneWidget(viewer)
        report["without_training"] = {"status": bare.status.value, "button_enabled": bare.run_button.enabled}
    finally:
        importlib.util.find_spec = real_find_spec
    viewer.window.remove_dock_widget("all")  # the canvas gets the room the Segment widget took
    _, fw = viewer.window.add_plugin_dock_widget("nseg-infer", "Fine-tune")
    w = {sub.label or sub.text: sub for sub in fw}
    w["corrected labels"].value = [viewer.layers[f"{n} nuclei"] for n in images]
    w["output folder"].value = str(args.out / "models")
    w["minutes"].value = 0
    w["steps"].value = 10000
    w["Fine-tune"].native.click()
    try:
        wait_until(app, lambda: w["progress"].value >= 1, 300)
    finally:
        w["Cancel"].native.click()
    wait_until(app, lambda: fw.worker is None, 300)
    report["cancel"] = {"status": w["status"].value, "layers": [ly.name for ly in viewer.layers]}

    w["steps"].value = args.steps
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
        if not shot_taken["done"] and v >= args.steps // 2:
            shot(viewer, "finetune-running.png")
            shot_taken["done"] = True

    t0 = time.perf_counter()
    w["Fine-tune"].native.click()
    try:
        wait_until(app, lambda: fw.worker is None, args.timeout, on_turn)
    except TimeoutError:
        fw.cancel()  # the training process must not outlive this script
        raise
    timer.stop()
    result = fw.result or {}
    report["finetune"] = {"seconds": round(time.perf_counter() - t0, 1), "timer_ticks": ticks["n"],
                          "progress_values": seen, "progress_max": int(w["progress"].max),
                          "status": w["status"].value, "kept": result.get("kept"),
                          "bundle": str(result.get("bundle", ""))}

    # -- 4. the bundle in the runtime gives the adapted layers exactly --------------------------
    predictor = Predictor(load_bundle(result["bundle"]))
    report["adapted"] = {}
    for name, layer in images.items():
        adapted = np.asarray(viewer.layers[f"{name} nuclei (adapted)"].data)
        runtime = segment_with(predictor, np.asarray(layer.data), InputOptions()).labels
        report["adapted"][name] = {"equals_runtime": bool(np.array_equal(adapted, runtime)),
                                   "translate": list(viewer.layers[f"{name} nuclei (adapted)"].translate),
                                   "image_translate": list(layer.translate),
                                   "n_nuclei": int(adapted.max()), "dsb": dsb_score(truths[name], adapted)}
    for name in images:
        viewer.layers[f"{name} nuclei"].visible = False
        viewer.layers[f"{name} nuclei (default)"].visible = True
        viewer.layers[f"{name} nuclei (adapted)"].visible = False
    shot(viewer, "finetune-before.png")
    for name in images:
        viewer.layers[f"{name} nuclei (default)"].visible = False
        viewer.layers[f"{name} nuclei (adapted)"].visible = True
    shot(viewer, "finetune-after.png")
    viewer.close()
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
