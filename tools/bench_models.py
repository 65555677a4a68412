#!/usr/bin/env python
"""The UNet and the Mask R-CNN bundles side by side under `nseg-infer run`, on the same real images.

Inputs: the 7 images of examples/sample plus a 2048 x 2048 mosaic of its fluorescence images (a
crowded field, ~1,500 nuclei). For each bundle:
- the whole command (`nseg-infer run FILES --out DIR --device cpu`, one process, all products),
  with the start-up of a 64 x 64 run subtracted, in seconds per megapixel;
- where the time goes, in process: the model calls (the backend), the rest of `Predictor.predict`
  (normalisation, tiling, merging, mask pasting or watershed), and writing the products.
Results replace the "## UNet and Mask R-CNN side by side" section of docs/benchmarks.md.

    .venv/bin/python tools/bench_models.py [--maskrcnn BUNDLE] [--no-write]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from bench_infer import machine, publish  # noqa: E402

SECTION = "## UNet and Mask R-CNN side by side"
SAMPLE = ROOT / "examples" / "sample" / "stage1_train"


def sample_images() -> list[Path]:
    return sorted(SAMPLE.glob("*/images/*.png"))


def write_mosaic(out: Path, side: int = 2048) -> Path:
    from nseg_data.modality import infer_modality
    from PIL import Image

    tiles = []
    for p in sample_images():
        img = np.asarray(Image.open(p).convert("RGB"))
        if str(infer_modality(img)) == "fluorescence":
            tiles.append(img[:256, :256])
    rows = []
    k = 0
    for _ in range(side // 256):
        row = []
        for _ in range(side // 256):
            t = tiles[k % len(tiles)]
            row.append(np.pad(t, ((0, 256 - t.shape[0]), (0, 256 - t.shape[1]), (0, 0))))
            k += 1
        rows.append(np.concatenate(row, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)
    return out


def megapixels(files: list[Path]) -> float:
    from PIL import Image

    return sum(Image.open(f).size[0] * Image.open(f).size[1] for f in files) / 1e6


def whole_command(model: str, files: list[Path], out: Path) -> float:
    cmd = [str(Path(sys.executable).parent / "nseg-infer"), "run", *map(str, files), "--out", str(out),
           "--device", "cpu", "--model", model]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


class TimedBackend:
    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = 0.0

    def run(self, batch):
        t0 = time.perf_counter()
        out = self.inner.run(batch)
        self.seconds += time.perf_counter() - t0
        return out


def breakdown(model: str, files: list[Path], out: Path) -> dict:
    from nseg_infer.engine.backends import create_backend
    from nseg_infer.engine.bundle import load_bundle
    from nseg_infer.engine.predictor import Predictor, RunConfig
    from nseg_infer.runners.files import FileRunner
    from nseg_infer.sources.imageio import open_image

    bundle = load_bundle(model)
    backend = TimedBackend(create_backend(bundle, "cpu"))
    pred = Predictor(bundle, RunConfig(device="cpu"), backend=backend)
    predict_s = 0.0
    nuclei = 0
    for f in files:
        with open_image(f) as src:
            t0 = time.perf_counter()
            nuclei += pred.predict(src).max_label
            predict_s += time.perf_counter() - t0
    model_s = backend.seconds
    t0 = time.perf_counter()
    FileRunner(pred).process_many(files, out)
    total_s = time.perf_counter() - t0
    return {"model_s": model_s, "post_s": predict_s - model_s,
            "products_s": max(total_s - predict_s, 0.0), "nuclei": nuclei}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unet", default=None, help="UNet bundle (default: the bundled default)")
    ap.add_argument("--maskrcnn", default=str(ROOT / "packages/nseg-infer/src/nseg_infer/assets/maskrcnn"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from nseg_infer.engine.bundle import default_bundle_path

    models = {"UNet (default)": args.unet or str(default_bundle_path()), "Mask R-CNN": args.maskrcnn}
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        files = [*sample_images(), write_mosaic(tmp / "mosaic2048.png")]
        tiny = tmp / "tiny.png"
        from PIL import Image

        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tiny)
        mpx = megapixels(files)
        for name, model in models.items():
            startup = whole_command(model, [tiny], tmp / "startup")
            whole = whole_command(model, files, tmp / f"run-{len(rows)}")
            b = breakdown(model, files, tmp / f"in-{len(rows)}")
            r = {"name": name, "whole_s": whole, "startup_s": startup, **b}
            rows.append(r)
            print(f"{name}: whole {whole:.1f} s (start-up {startup:.1f} s), model {b['model_s']:.1f} s, "
                  f"post-processing {b['post_s']:.1f} s, products {b['products_s']:.1f} s, {b['nuclei']} nuclei", flush=True)
    lines = ["| model | whole command s/Mpx | Mpx/s | model calls s/Mpx | rest of predict s/Mpx | products s/Mpx | nuclei |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        net = r["whole_s"] - r["startup_s"]
        lines.append(f"| {r['name']} | {net / mpx:.2f} | {mpx / net:.2f} | {r['model_s'] / mpx:.2f} | "
                     f"{r['post_s'] / mpx:.2f} | {r['products_s'] / mpx:.2f} | {r['nuclei']} |")
    body = (f"Measured by `tools/bench_models.py` on {time.strftime('%Y-%m-%d')}: {machine()}. Inputs: the 7 sample "
            f"images and a 2048 x 2048 mosaic of its fluorescence images, {mpx:.2f} Mpx in all. 'Whole command' is one "
            "`nseg-infer run FILES --device cpu` process writing every product, minus the start-up of a 64 x 64 run; "
            "the other columns split the same work in process: the backend's model calls, the rest of "
            "`Predictor.predict` (normalisation, tiling, merging, watershed or mask pasting) and writing the products.\n\n"
            + "\n".join(lines))
    return publish(SECTION, body, write=not args.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
