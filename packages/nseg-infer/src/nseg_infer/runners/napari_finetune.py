"""napari's Fine-tune widget: corrected labels layers -> an adapted model -> the images segmented again.

The loop: the Segment widget makes `NAME nuclei` for an image layer `NAME`; the user corrects it
with napari's own label tools (paint, fill, erase), on one image or several; the Fine-tune widget
writes each chosen pair as `NAME.png` + `NAME.labels.tif` into a new run folder, runs
`nseg-train adapt` on it from a worker thread (progress bar, Cancel), exports the model it kept
with `nseg-export onnx` (`RUN/bundle`: what `nseg-infer run --model` and the Segment widget's
`model` field take), and adds `NAME nuclei (adapted)` for every image it learnt from.

Fine-tuning needs torch (nseg-train, nseg-export). It runs in a process of its own, so napari's
process never imports torch (whose compiler's LLVM crashes the viewer next to Mesa's OpenGL) and
Cancel stops it at once; without those packages the widget says what to install. The helpers
that pair and write layers import neither napari nor Qt and are tested headless; `FinetuneWidget`
(a magicgui Container made on first use) is built by napari.
"""

# No `from __future__ import annotations`: napari and magicgui read annotations at run time.
import atexit
import ctypes
import ctypes.util
import importlib.util
import json
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # napari is napari's to import
    import napari

SUFFIX = " nuclei"  # the Segment widget's labels layer is "NAME nuclei"
ADAPTED = " (adapted)"
INSTALL = ("fine-tuning needs nseg-train (torch) and nseg-export, which are not installed: "
           "pip install packages/nseg-train packages/nseg-export (from the nseg repository)")


def missing_training() -> str | None:
    """What to install for fine-tuning, or None when nseg-train and nseg-export are there
    (looked up without importing them: importing nseg-train loads torch)."""
    if all(importlib.util.find_spec(m) is not None for m in ("torch", "nseg_train", "nseg_export")):
        return None
    return INSTALL


def _yx(layer) -> tuple[int, ...]:
    shape = tuple(np.shape(layer.data))
    return shape[-3:-1] if getattr(layer, "rgb", False) else shape[-2:]


def corrected_pairs(layers) -> list[tuple[Any, Any]]:
    """(image layer, labels layer) for each labels layer named `NAME nuclei` whose image layer
    `NAME` is open with the same size: the layers a fine-tune can learn from."""
    images = {ly.name: ly for ly in layers if type(ly).__name__ == "Image"}
    out = []
    for ly in layers:
        if type(ly).__name__ != "Labels" or not ly.name.endswith(SUFFIX):
            continue
        img = images.get(ly.name[: -len(SUFFIX)])
        if img is not None and _yx(img) == tuple(np.shape(ly.data)[-2:]):
            out.append((img, ly))
    return out


def rgb8(name: str, data: np.ndarray, rgb: bool) -> np.ndarray:
    """An image layer's pixels as the HxWx3 uint8 a label folder holds: 8-bit as it is, deeper
    data stretched between its 0.1 and 99.9 percentiles, gray repeated to three channels."""
    a = np.asarray(data)
    if not (a.ndim == 2 or (rgb and a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"layer {name!r} has shape {a.shape}: fine-tuning takes 2-D gray or RGB image layers")
    if rgb:
        a = a[..., :3]
    if a.dtype != np.uint8:
        lo, hi = np.percentile(a, (0.1, 99.9))
        a = np.clip((a.astype(np.float64) - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a if rgb else np.repeat(a[..., None], 3, axis=2))


def write_pairs(pairs: list[tuple[str, np.ndarray, np.ndarray]], folder: Path) -> Path:
    """(name, HxWx3 uint8 image, HxW labels) -> FOLDER/NAME.png + NAME.labels.tif."""
    from nseg_data.labelio import write_labels
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, image, labels in pairs:
        if not np.asarray(labels).any():
            raise ValueError(f"labels layer {name + SUFFIX!r} holds no nuclei: correct it (or unselect it) first")
        Image.fromarray(image).save(folder / f"{name}.png")
        write_labels(folder / f"{name}.labels.tif", np.asarray(labels))
    return folder


def next_run(out: Path) -> Path:
    """OUT/finetune-001, -002, ...: the first that does not exist (every fine-tune keeps its own)."""
    n = 1
    while (out / f"finetune-{n:03d}").exists():
        n += 1
    return out / f"finetune-{n:03d}"


@dataclass(frozen=True)
class Step:
    """A progress line of `nseg-train adapt`, parsed."""

    step: int
    total: int
    loss: float
    minutes_left: float


STEP_LINE = re.compile(r"^step (\d+)/(\d+) loss (\S+) \(\S+ s/step, (\S+) min left\)")


def parse_step(line: str) -> Step | None:
    m = STEP_LINE.match(line.strip())
    return Step(int(m[1]), int(m[2]), float(m[3]), float(m[4])) if m else None


def _command(cli: str, *args: str) -> list[str]:
    # The commands' own entry points, in this interpreter (the scripts may not be on PATH).
    return [sys.executable, "-c", f"from {cli} import app; app()", *args]


def _dies_with_parent() -> Callable[[], None] | None:
    """On Linux, a `preexec_fn` asking the kernel to send the child SIGTERM when napari's process
    ends for any reason, a crash or a kill included; elsewhere None (atexit covers a normal quit).
    The C function is looked up here, before the fork, so the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    pr_set_pdeathsig = 1

    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


def _run(cmd: list[str], on_line: Callable[[str], None], cancel: threading.Event) -> None:
    """Run `cmd`, handing each output line to `on_line`; terminate it when `cancel` is set or
    when napari quits: a training left running would hold both cores with no one to see it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            preexec_fn=_dies_with_parent())
    atexit.register(proc.terminate)

    def watch() -> None:
        while proc.poll() is None:
            if cancel.wait(0.2):
                proc.terminate()
                return

    threading.Thread(target=watch, daemon=True).start()
    tail: deque[str] = deque(maxlen=15)
    try:
        for line in proc.stdout:
            tail.append(line.rstrip())
            on_line(line)
        proc.wait()
    finally:
        atexit.unregister(proc.terminate)
    if cancel.is_set():
        raise FinetuneCancelled("cancelled: no model was written")
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[3:5])} failed (exit {proc.returncode}):\n" + "\n".join(tail))


class FinetuneCancelled(RuntimeError):
    pass


def finetune(pairs: list[tuple[str, np.ndarray, np.ndarray]], out: Path, *, steps: int, minutes: float | None,
             progress: Callable[[Step | str], None], cancel: threading.Event) -> dict:
    """Write the pairs to OUT/finetune-NNN/images, run `nseg-train adapt` on them and
    `nseg-export onnx` on the model it kept (RUN/bundle); returns {"run", "bundle", "kept",
    "message"}. Runs in the widget's worker thread. Training runs in its own process: torch stays
    out of napari's (its LLVM-based compiler clashes with the one of Mesa's OpenGL and crashes
    the viewer), and Cancel can stop it at once."""
    run = next_run(Path(out))
    images = write_pairs(pairs, run / "images")
    _run(_command("nseg_train.cli", "adapt", str(images), "--out", str(run / "adapt"), "--steps", str(steps),
                  "--minutes", str(minutes or 0)),
         lambda line: progress(parse_step(line) or line.strip()), cancel)
    progress("exporting the kept model as a bundle...")
    bundle = run / "bundle"
    _run(_command("nseg_export.cli", "onnx", str(run / "adapt" / "model.pt"), "--out", str(bundle)),
         lambda line: None, cancel)
    report = json.loads((run / "adapt" / "adapt.json").read_text())
    return {"run": run, "bundle": bundle, "kept": report["kept"], "message": report["message"]}


def segment_again(images: list, bundle: Path) -> list[tuple[np.ndarray, dict]]:
    """Each image layer segmented with the bundle, as the Segment widget does: (labels, layer
    kwargs) named `NAME nuclei (adapted)`."""
    from nseg_infer.engine.backends import create_backend
    from nseg_infer.engine.bundle import load_bundle
    from nseg_infer.engine.predictor import Predictor, RunConfig
    from nseg_infer.runners.napari_plugin import segment_layer

    b = load_bundle(bundle)
    predictor = Predictor(b, RunConfig(), backend=create_backend(b, "auto"))
    out = []
    for img in images:
        data, meta, _ = segment_layer(img, predictor=predictor)
        out.append((data, {**meta, "name": f"{img.name}{SUFFIX}{ADAPTED}"}))
    return out


def __getattr__(name: str):
    if name == "FinetuneWidget":
        from nseg_infer.runners.napari_plugin import widget_class

        return widget_class(globals(), name, _finetune_widget_class)
    raise AttributeError(name)


def _finetune_widget_class():
    from magicgui.widgets import (
        Container,
        FloatSpinBox,
        Label,
        LineEdit,
        ProgressBar,
        PushButton,
        Select,
        SpinBox,
    )

    class FinetuneWidget(Container):
        """The dock widget: choose corrected labels layers, press Fine-tune; training runs in a
        worker thread with a step progress bar and a Cancel button; when done, each image's
        `NAME nuclei (adapted)` layer is added and the status says which model was kept and why.
        `worker` is the running worker (None when idle); `result` the last finished fine-tune."""

        def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
            self.viewer = viewer = napari_viewer
            self.corrected = Select(label="corrected labels", choices=lambda _w: [
                (lab.name, lab) for _img, lab in corrected_pairs(viewer.layers)])
            self.steps = SpinBox(label="steps", value=2400, min=1, max=100000,
                                 tooltip="optimizer steps of the fine-tune")
            self.minutes = FloatSpinBox(label="minutes", value=12.0, min=0.0, max=1440.0, step=1.0,
                                        tooltip="time budget of the training (0: none, run every step)")
            self.out = LineEdit(label="output folder", value=str(Path.home() / "nseg-finetune"),
                                tooltip="each fine-tune writes OUT/finetune-NNN: its images, model and bundle")
            self.run_button = PushButton(text="Fine-tune")
            self.cancel_button = PushButton(text="Cancel", enabled=False)
            self.progress = ProgressBar(label="progress", value=0, min=0, max=1, visible=False)
            self.status = Label(label="status", value="")
            self.status.native.setWordWrap(True)  # the stop-loss's verdict is a sentence with its numbers
            super().__init__(widgets=[self.corrected, self.steps, self.minutes, self.out, self.run_button,
                                      self.cancel_button, self.progress, self.status])
            self.worker = None
            self.result: dict | None = None
            self._cancel = threading.Event()
            # Quitting napari cancels a fine-tune under way, so no worker keeps the app waiting.
            from qtpy.QtWidgets import QApplication

            if (app := QApplication.instance()) is not None:
                app.aboutToQuit.connect(self._cancel.set)
            viewer.layers.events.inserted.connect(self._layers_changed)
            viewer.layers.events.removed.connect(self._layers_changed)
            self.run_button.changed.connect(self.start)
            self.cancel_button.changed.connect(self.cancel)
            missing = missing_training()
            if missing:
                self.status.value = missing
                self.run_button.enabled = False

        def _layers_changed(self, _event=None) -> None:
            self.corrected.reset_choices()

        def start(self) -> None:
            from napari.qt.threading import create_worker
            from superqt.utils import ensure_main_thread

            chosen = list(self.corrected.value)
            if not chosen:
                self.status.value = "select the corrected labels layers (NAME nuclei) to learn from"
                return
            by_labels = {id(lab): img for img, lab in corrected_pairs(self.viewer.layers)}
            try:
                images = [by_labels[id(lab)] for lab in chosen]
                pairs = [(img.name, rgb8(img.name, img.data, img.rgb), np.array(lab.data))
                         for img, lab in zip(images, chosen, strict=True)]
            except (KeyError, ValueError) as e:
                self._failed(e)
                return

            @ensure_main_thread
            def show(p) -> None:  # called from the worker thread; runs in the GUI's
                if isinstance(p, Step):
                    self.progress.max, self.progress.value = p.total, p.step
                    self.status.value = f"training: step {p.step}/{p.total}, loss {p.loss:.3f}, {p.minutes_left:.1f} min left"
                elif p.startswith(("trained", "exporting", "preparing", "segmenting")):
                    self.status.value = p

            self._cancel.clear()
            self.progress.value, self.progress.max, self.progress.visible = 0, max(1, self.steps.value), True
            self.run_button.enabled, self.cancel_button.enabled = False, True
            self.status.value = f"preparing {len(pairs)} image(s)..."
            out, steps, minutes = Path(self.out.value).expanduser(), self.steps.value, self.minutes.value or None

            def work() -> tuple[dict, list]:
                result = finetune(pairs, out, steps=steps, minutes=minutes, progress=show, cancel=self._cancel)
                show("segmenting the images again with the kept model...")
                return result, segment_again(images, result["bundle"])

            # Connected here, not after: superqt re-raises a worker's error when "errored" has no
            # handler at creation, and a cancelled fine-tune ends in one (FinetuneCancelled).
            worker = create_worker(work, _start_thread=False,
                                   _connect={"returned": self._finished, "errored": self._failed})
            self.worker = worker
            worker.start()

        def cancel(self) -> None:
            self._cancel.set()
            self.status.value = "cancelling..."

        def _finished(self, done: tuple[dict, list]) -> None:
            result, layers = done
            for data, meta in layers:
                if meta["name"] in self.viewer.layers:
                    self.viewer.layers.remove(meta["name"])
                self.viewer.add_labels(data, **meta)
            self.result = result
            self.status.value = f"{result['message']}; bundle: {result['bundle']}"
            self._idle()

        def _failed(self, exc: Exception) -> None:
            from napari.utils.notifications import show_error

            cancelled = isinstance(exc, FinetuneCancelled)
            self.status.value = str(exc) if cancelled else f"error: {exc}"
            self.progress.visible = False
            self._idle()
            if not cancelled:
                show_error(f"nseg: {exc}")

        def _idle(self) -> None:
            self.run_button.enabled, self.cancel_button.enabled = True, False
            self.worker = None

    return FinetuneWidget
