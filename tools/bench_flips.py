#!/usr/bin/env python
"""What test-time flips cost: `Predictor.predict` Mpx/s of the default model with each flip set.

One process, the flip sets of `tools/probe_flips.py` (none, horizontal, rot180, four) taking turns
round after round on the same synthetic fluorescence-like image (`bench_infer.synthetic_image`),
so machine load falls on all alike; medians shown, each set's slowdown against no flips. Their
accuracy is in docs/results/long-run. Results replace the "## Test-time flips" section of
docs/benchmarks.md.

    .venv/bin/python tools/bench_flips.py [--side 2048] [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from bench_infer import machine, publish, synthetic_image  # noqa: E402
from probe_flips import FLIP_SETS  # noqa: E402

SECTION = "## Test-time flips"


def main(argv: list[str] | None = None) -> int:
    from nseg_infer.engine.backends import FlipAverage, create_backend
    from nseg_infer.engine.bundle import load_bundle
    from nseg_infer.engine.predictor import Predictor, RunConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", help="bundle (default: the bundled default)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    bundle = load_bundle(a.model)
    predictors = {name: Predictor(bundle, RunConfig(device="cpu"), backend=FlipAverage(create_backend(bundle, "cpu"), flips=f))
                  for name, f in FLIP_SETS.items()}
    image = synthetic_image(a.side)
    for p in predictors.values():  # session and allocator warm-up is not part of the throughput
        p.predict(image[:512, :512])
    seconds: dict[str, list[float]] = {n: [] for n in predictors}
    for r in range(a.rounds):
        for name, p in predictors.items():
            t0 = time.perf_counter()
            p.predict(image)
            seconds[name].append(time.perf_counter() - t0)
            print(f"round {r + 1} {name}: {seconds[name][-1]:.2f} s", flush=True)
    mpx = a.side * a.side / 1e6
    base = statistics.median(seconds["none"])
    lines = ["| flips | model calls per tile | seconds | Mpx/s | time vs none |", "|---|---:|---:|---:|---:|"]
    for name, f in FLIP_SETS.items():
        s = statistics.median(seconds[name])
        lines.append(f"| {name} | {len(f)} | {s:.2f} | {mpx / s:.2f} | x{s / base:.2f} |")
    body = (f"Measured by `tools/bench_flips.py` on {time.strftime('%Y-%m-%d')}: {machine()}. `Predictor.predict` "
            f"(normalise, tile, model, blend, watershed) of the {a.model or 'bundled default'} model on a synthetic "
            f"{a.side} x {a.side} fluorescence-like image, ONNX Runtime on the CPU, the flip sets taking turns over "
            f"{a.rounds} rounds, medians shown.\n\n" + "\n".join(lines))
    return publish(SECTION, body, write=not a.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
