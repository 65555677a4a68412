#!/usr/bin/env python
"""Peak memory and speed of `nseg-infer run` from 1k to 16k: one process per image size.

Each size is a synthetic fluorescence-like tiled BigTIFF (`bench_infer.synthetic_image`), run as
`nseg-infer run IMAGE --out DIR --device cpu` in a child process; its peak RSS is that child's
own `ru_maxrss` (from `os.wait4`, not RUSAGE_CHILDREN, which keeps the largest child so far).
The budget is the uint32 label image plus 1 GiB (labels above `FileConfig.large_px` live in a
disk-backed memmap whose touched pages count in RSS). Mpx/s has the start-up (imports, model
load, a 64 x 64 image) subtracted. Results replace the "## Memory" section of docs/benchmarks.md.

    .venv/bin/python tools/bench_memory.py [--sizes 1024,4096,8192,16384] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from bench_infer import machine, publish, synthetic_image  # noqa: E402

SECTION = "## Memory"
GIB = 2**30


def write_tiff(path: Path, side: int) -> Path:
    import tifffile

    tifffile.imwrite(path, synthetic_image(side), tile=(512, 512), compression="zlib", bigtiff=True)
    return path


def run_child(image: Path, out: Path, model: str | None) -> dict:
    """Wall seconds and peak RSS (bytes) of one `nseg-infer run` process."""
    cmd = [str(Path(sys.executable).parent / "nseg-infer"), "run", str(image), "--out", str(out), "--device", "cpu"]
    if model:
        cmd += ["--model", model]
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"nseg-infer run failed on {image}:\n{err.read().decode()[-2000:]}")
    return {"seconds": seconds, "peak_rss": usage.ru_maxrss * 1024}  # Linux reports KiB


def table(rows: list[dict]) -> str:
    lines = ["| side (px) | Mpx | seconds | Mpx/s (start-up subtracted) | peak RSS (MiB) | label image (MiB) | "
             "budget: labels + 1 GiB (MiB) | within |", "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        labels = r["side"] ** 2 * 4
        budget = labels + GIB
        lines.append(f"| {r['side']} | {r['side'] ** 2 / 1e6:.1f} | {r['seconds']:.1f} | {r['mpx_s']} | "
                     f"{r['peak_rss'] / 2**20:.0f} | {labels / 2**20:.0f} | {budget / 2**20:.0f} | "
                     f"{'yes' if r['peak_rss'] <= budget else 'NO'} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1024,4096,8192,16384", help="image sides (px)")
    ap.add_argument("--model", help="bundle (default: the bundled default model)")
    ap.add_argument("--note", default="", help="extra sentence for the report (e.g. machine load)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        start = run_child(write_tiff(tmp / "tiny.tif", 64), tmp / "out-tiny", args.model)
        print(f"start-up: {start['seconds']:.1f} s, {start['peak_rss'] / 2**20:.0f} MiB", flush=True)
        for side in (int(s) for s in args.sizes.split(",") if s):
            image = write_tiff(tmp / f"img{side}.tif", side)
            r = {"side": side, **run_child(image, tmp / f"out{side}", args.model)}
            net = r["seconds"] - start["seconds"]
            # An image that takes no longer than the start-up has no meaningful rate.
            r["mpx_s"] = f"{side * side / 1e6 / net:.2f}" if net > 0.1 else "-"
            print(f"{side}: {r['seconds']:.1f} s, {r['mpx_s']} Mpx/s, peak {r['peak_rss'] / 2**20:.0f} MiB", flush=True)
            rows.append(r)
            image.unlink()
    body = (f"Measured by `tools/bench_memory.py` on {time.strftime('%Y-%m-%d')}: {machine()}. "
            f"{args.note + ' ' if args.note else ''}One `nseg-infer run IMAGE --out DIR --device cpu` process per "
            f"size (model: {args.model or 'the bundled default'}; default products), on a synthetic "
            "fluorescence-like tiled BigTIFF (read region by region); peak RSS is the child's own maximum "
            "resident set (Python, libraries, ONNX Runtime, the input and the label image included; above "
            "8192 x 8192 the labels are a disk-backed memmap whose touched pages count). Mpx/s has the "
            f"start-up of a 64 x 64 run ({start['seconds']:.1f} s) subtracted.\n\n" + table(rows))
    return publish(SECTION, body, write=not args.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
