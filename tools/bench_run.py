#!/usr/bin/env python
"""End-to-end speed of `nseg-infer run` beside the model path alone, optionally beside StarDist.

`tools/bench_infer.py` times `Predictor.predict` alone; this times it again on the same images
and then what a user waits for: the CLI process (imports, model load), reading the image files,
inference and writing labels TIFF, per-nucleus CSV, overlay PNG, GeoJSON and summary.csv. With
`--stardist-model DIR --stardist-python PATH` it also runs StarDist's own
`../shared/peers/stardist/segment_folder.py` on the same images and reports the ratio of the
two end-to-end throughputs, each with its start-up (a 64 x 64 image) subtracted; without them the
comparison is skipped. Results replace the "## End to end (nseg-infer run)" section of
docs/benchmarks.md.

    .venv/bin/python tools/bench_run.py [--cases 1024,4096,8x1024] [--model BUNDLE] [--no-write]
        [--device cpu|openvino] [--stardist-model DIR --stardist-python PATH]
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
from bench_infer import machine, publish, synthetic_image  # noqa: E402

SECTION = "## End to end (nseg-infer run)"
STARDIST_SCRIPT = ROOT.parent / "shared" / "peers" / "stardist" / "segment_folder.py"


def nseg_command(inputs: list[Path], out: Path, model: str | None, device: str = "cpu") -> list[str]:
    cmd = [str(Path(sys.executable).parent / "nseg-infer"), "run", *map(str, inputs), "--out", str(out),
           "--device", device]
    return cmd + (["--model", model] if model else [])


def timed(cmd: list[str], what: str) -> float:
    """Wall seconds of one process; a failure stops the benchmark with its message."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{what} failed:\n{p.stdout[-1000:]}\n{p.stderr[-2000:]}")
    return seconds


def rate(mpx: float, seconds: float, start: float) -> float | None:
    """Mpx/s with the start-up subtracted; None when the run took no longer than the start-up."""
    return mpx / (seconds - start) if seconds - start > 0.1 else None


def fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}"


def model_seconds(predictor, images: list[np.ndarray]) -> float:
    """`Predictor.predict` alone (in memory, no file I/O, no products), after a warm-up."""
    predictor.predict(images[0][:256, :256])
    t0 = time.perf_counter()
    for img in images:
        predictor.predict(img)
    return time.perf_counter() - t0


def write_inputs(folder: Path, images: list[np.ndarray], fmt: str) -> list[Path]:
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(images):
        p = folder / f"img{k}.{fmt}"
        if fmt == "png":
            Image.fromarray(img).save(p)
        else:
            tifffile.imwrite(p, img, tile=(512, 512), compression="zlib", bigtiff=True)
        paths.append(p)
    return paths


def case_images(case: str) -> list[np.ndarray]:
    """'4096': one synthetic image of that side; '8x1024': eight different ones; 'dir:PATH': the
    PNG images of a folder (real data, e.g. a split's images), in name order."""
    if case.startswith("dir:"):
        from PIL import Image

        files = sorted(Path(case[4:]).glob("*.png"))
        if not files:
            raise SystemExit(f"{case[4:]}: no PNG images")
        return [np.asarray(Image.open(f).convert("RGB")) for f in files]
    count, _, side = case.rpartition("x")
    return [synthetic_image(int(side), seed=k) for k in range(int(count or 1))]


def case_label(case: str, images: list[np.ndarray]) -> str:
    if case.startswith("dir:"):
        return f"{len(images)} images of {Path(case[4:]).name}"
    count, _, side = case.rpartition("x")
    return f"{count or 1} x {side}²"


class StarDist:
    """StarDist's own `segment_folder.py` (its venv's Python, a trained model folder) on a folder."""

    def __init__(self, python: str, model: str, script: Path) -> None:
        for p in (Path(python), Path(model), script):
            if not p.exists():
                raise SystemExit(f"StarDist comparison: {p} does not exist")
        self.cmd = [python, str(script)]
        self.model = model

    def seconds(self, in_dir: Path, out: Path) -> float:
        return timed([*self.cmd, str(in_dir), str(out), self.model], f"StarDist on {in_dir}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="1024,4096,8192,8x1024",
                    help="image sides, NxSIDE for N different images in one command, or dir:PATH for a folder of PNGs")
    ap.add_argument("--model", help="bundle (default: the bundled default model)")
    ap.add_argument("--device", default="cpu", help="the runtime's --device for both nseg columns (cpu: ONNX Runtime fp32)")
    ap.add_argument("--stardist-model", help="a trained StarDist2D model folder: compare with StarDist")
    ap.add_argument("--stardist-python", help="the Python of StarDist's own environment")
    ap.add_argument("--stardist-script", default=str(STARDIST_SCRIPT), help="StarDist's segment_folder.py")
    ap.add_argument("--note", default="", help="extra sentence for the report (e.g. machine load)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if bool(args.stardist_model) != bool(args.stardist_python):
        ap.error("--stardist-model and --stardist-python go together")
    stardist = StarDist(args.stardist_python, args.stardist_model, Path(args.stardist_script)) \
        if args.stardist_model else None
    from nseg_infer.engine.predictor import Predictor, RunConfig

    predictor = Predictor(args.model, RunConfig(device=args.device))
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        tiny = write_inputs(tmp / "tiny", [synthetic_image(64)], "png")
        start = timed(nseg_command(tiny, tmp / "out-tiny", args.model, args.device), "nseg-infer run (start-up)")
        sd_start = stardist.seconds(tmp / "tiny", tmp / "sd-tiny") if stardist else None
        print(f"start-up: nseg {start:.1f} s" + (f", StarDist {sd_start:.1f} s" if stardist else ""), flush=True)
        for case in args.cases.split(","):
            images = case_images(case)
            mpx = sum(i.shape[0] * i.shape[1] for i in images) / 1e6
            model = mpx / model_seconds(predictor, images)
            for fmt in ("png", "tif"):
                files = write_inputs(tmp / f"in-{case}-{fmt}", images, fmt)
                out = tmp / f"out-{case}-{fmt}"
                seconds = timed(nseg_command(files, out, args.model, args.device), f"nseg-infer run on {case} {fmt}")
                r = {"case": case_label(case, images), "fmt": fmt, "mpx": mpx, "model_mpx_s": model, "seconds": seconds,
                     "mpx_s": rate(mpx, seconds, start),
                     "products_mb": sum(f.stat().st_size for f in out.iterdir()) / 2**20}
                if stardist is not None and fmt == "png":  # StarDist's script reads through Pillow
                    sd = stardist.seconds(files[0].parent, tmp / f"sd-{case}")
                    r["sd_mpx_s"] = rate(mpx, sd, sd_start)
                print(case, fmt, {k: round(v, 2) for k, v in r.items() if isinstance(v, float)}, flush=True)
                rows.append(r)
    body = report(rows, args, predictor.backend_name, start, sd_start)
    return publish(SECTION, body, write=not args.no_write)


def report(rows: list[dict], args: argparse.Namespace, backend: str, start: float, sd_start: float | None) -> str:
    sd = sd_start is not None
    head = ("| images | Mpx | input | model only (Predictor.predict) Mpx/s | whole command s | whole command Mpx/s | "
            "whole / model | products (MB) |" + (" StarDist end to end Mpx/s | nseg / StarDist |" if sd else ""))
    lines = [head, "|---|---:|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if sd else "")]
    for r in rows:
        line = (f"| {r['case']} | {r['mpx']:.1f} | {r['fmt'].upper()} | {r['model_mpx_s']:.2f} | "
                f"{r['seconds']:.1f} | {fmt_rate(r['mpx_s'])} | {ratio(r['mpx_s'], r['model_mpx_s'])} | "
                f"{r['products_mb']:.1f} |")
        if sd:
            line += (f" {fmt_rate(r['sd_mpx_s'])} | {ratio(r['mpx_s'], r['sd_mpx_s'])} |" if "sd_mpx_s" in r else " | |")
        lines.append(line)
    text = (f"Measured by `tools/bench_run.py` on {time.strftime('%Y-%m-%d')}: {machine()}. "
            f"{args.note + ' ' if args.note else ''}Model: {args.model or 'the bundled default'}. *Model only* is "
            "`Predictor.predict` on the decoded image in memory (normalisation, tiling, batched model, blending, "
            f"watershed), after a warm-up. *Whole command* is one `nseg-infer run FILES --out DIR --device {args.device}` "
            f"process per row (backend {backend}): reading the files (a tiled BigTIFF region by region), segmenting them and writing "
            "the default products (labels, CSV, overlay, GeoJSON) and summary.csv, files overlapped as "
            f"`process_many` pipelines them; its Mpx/s has the start-up (imports, model load and a 64 x 64 image: "
            f"{start:.1f} s) subtracted. Synthetic fluorescence-like images as in the sections above "
            "(`NxSIDE`: N different images in one command).")
    if sd:
        text += (f" StarDist: its own `segment_folder.py` (model {args.stardist_model}) on the same PNG folder, one "
                 "process, writing its labels TIFF only (nseg writes four products), its start-up measured the "
                 f"same way ({sd_start:.1f} s) and subtracted; *nseg / StarDist* is the ratio of the two "
                 "throughputs.")
    return text + "\n\n" + "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
