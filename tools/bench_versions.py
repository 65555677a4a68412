#!/usr/bin/env python
"""Whole-command speed and peak memory of this tree beside an earlier commit, side by side.

Each size is one synthetic fluorescence-like tiled BigTIFF (`bench_memory.write_tiff`), run as
`nseg-infer run IMAGE --out DIR --device cpu` (default products, each tree's bundled default
model) in a child process per run, with each tree's own code on PYTHONPATH; the earlier commit
runs from a git worktree (`tools/check_outputs.worktree`). Runs alternate between the two
versions (base, head, head, base, ...) so a drift in machine load falls on both alike; each
figure is the median over rounds, peak RSS the child's own maximum resident set. Results replace
the "## Against an earlier version" section of docs/benchmarks.md.

    .venv/bin/python tools/bench_versions.py --base COMMIT [--sizes 16384] [--rounds 2] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from bench_infer import machine, publish  # noqa: E402
from bench_memory import write_tiff  # noqa: E402
from check_outputs import cli_module, worktree  # noqa: E402

SECTION = "## Against an earlier version"


def run_child(tree: Path, image: Path, out: Path) -> dict:
    """Wall seconds and peak RSS (bytes) of one `nseg-infer run` with `tree`'s code."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in sorted((tree / "packages").glob("*/src"))))
    cmd = [sys.executable, "-m", cli_module(tree), "run", str(image), "--out", str(out), "--device", "cpu"]
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=tree)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"{tree.name}: nseg-infer run failed on {image}:\n{err.read().decode()[-2000:]}")
    return {"seconds": seconds, "peak_rss": usage.ru_maxrss * 1024}  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the earlier commit to compare with")
    ap.add_argument("--sizes", default="16384", help="image sides (px)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each version per size")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench-versions",
                    help="folder for the earlier commit's worktree (kept for reruns)")
    ap.add_argument("--note", default="", help="extra sentence for the report (e.g. machine load)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    a.work.mkdir(parents=True, exist_ok=True)
    base = worktree(a.base, a.work)
    head_name = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    trees = {"base": base, "head": ROOT}
    lines = ["| side (px) | version | seconds | Mpx/s | peak RSS (MiB) |", "|---:|---|---:|---:|---:|"]
    ratios = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for side in (int(s) for s in a.sizes.split(",") if s):
            image = write_tiff(tmp / f"img{side}.tif", side)
            runs: dict[str, list[dict]] = {"base": [], "head": []}
            for r in range(a.rounds):
                for name in (("base", "head") if r % 2 == 0 else ("head", "base")):
                    got = run_child(trees[name], image, tmp / f"out-{name}-{side}-{r}")
                    runs[name].append(got)
                    print(f"{side} {name} round {r + 1}: {got['seconds']:.1f} s, "
                          f"peak {got['peak_rss'] / 2**20:.0f} MiB", flush=True)
            med = {n: (statistics.median(x["seconds"] for x in v), statistics.median(x["peak_rss"] for x in v))
                   for n, v in runs.items()}
            for n, label in (("base", f"earlier (`{base.name.removeprefix('base-')}`)"), ("head", f"this (`{head_name}`)")):
                s, rss = med[n]
                lines.append(f"| {side} | {label} | {s:.1f} | {side * side / 1e6 / s:.2f} | {rss / 2**20:.0f} |")
            ratios.append(f"{side} px: time x{med['head'][0] / med['base'][0]:.2f}, "
                          f"peak memory x{med['head'][1] / med['base'][1]:.2f}")
            image.unlink()
    body = (f"Measured by `tools/bench_versions.py --base {a.base}` on {time.strftime('%Y-%m-%d')}: {machine()}. "
            "One `nseg-infer run IMAGE --out DIR --device cpu` process per run (default products, the bundled "
            "default model), each version's own code, on a synthetic fluorescence-like tiled BigTIFF; the two "
            f"versions alternate, {a.rounds} runs each, medians shown (seconds include start-up). "
            f"{a.note + ' ' if a.note else ''}"
            f"This version against the earlier one: {'; '.join(ratios)}.\n\n" + "\n".join(lines))
    return publish(SECTION, body, write=not a.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
