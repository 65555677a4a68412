#!/usr/bin/env python
"""End-to-end speed of `nseg-infer run`: files in, every product out, process start included.

`tools/bench_infer.py` times `Predictor.predict` alone; this times what a user waits for: the
CLI process (imports, model load), reading the image file, inference, and writing labels TIFF,
per-nucleus CSV, overlay PNG, GeoJSON and summary.csv. Results replace the
"## End to end (nseg-infer run)" section of docs/benchmarks.md.

    .venv/bin/python tools/bench_run.py [--sides 1024,4096] [--model BUNDLE] [--no-write]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import machine, synthetic_image, write_section_named

SECTION = "## End to end (nseg-infer run)"


def measure(side: int, fmt: str, model: str | None, tmp: Path) -> dict:
    import tifffile
    from PIL import Image

    img = synthetic_image(side)
    src = tmp / f"img{side}.{fmt}"
    if fmt == "png":
        Image.fromarray(img).save(src)
    else:
        tifffile.imwrite(src, img, tile=(512, 512), compression="zlib", bigtiff=True)
    out = tmp / f"out{side}{fmt}"
    cmd = [str(Path(sys.executable).parent / "nseg-infer"), "run", str(src), "--out", str(out), "--device", "cpu"]
    if model:
        cmd += ["--model", model]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"nseg-infer run failed on {src}:\n{p.stderr[-2000:]}")
    products = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    return {"side": side, "fmt": fmt, "seconds": seconds, "mpx_s": side * side / 1e6 / seconds, "products_mb": products}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sides", default="1024,4096,8192")
    ap.add_argument("--model", help="bundle (default: the bundled default model)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as t:
        for side in (int(s) for s in args.sides.split(",")):
            for fmt in ("png", "tif"):
                r = measure(side, fmt, args.model, Path(t))
                print(f"{side} {fmt}: {r['seconds']:.1f} s, {r['mpx_s']:.2f} Mpx/s", flush=True)
                rows.append(r)
    lines = ["| side (px) | Mpx | input | seconds (whole command) | Mpx/s | products (MB) |", "|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['side']} | {r['side'] ** 2 / 1e6:.1f} | {r['fmt'].upper()} | {r['seconds']:.1f} | "
                     f"{r['mpx_s']:.2f} | {r['products_mb']:.1f} |")
    body = (f"Measured by `tools/bench_run.py` on {time.strftime('%Y-%m-%d')}: {machine()}. One `nseg-infer run IMAGE "
            f"--out DIR --device cpu` process per image (model: {args.model or 'the bundled default'}); the time is the "
            "whole command: start-up and imports, model load, reading the file (tiled BigTIFF region by region), "
            "inference and writing all products. Synthetic fluorescence-like images as in the section above.\n\n"
            + "\n".join(lines))
    print(body)
    if not args.no_write:
        write_section_named(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
