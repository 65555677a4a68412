#!/usr/bin/env python
"""Does the network set the pace? `nseg-infer run` with the default products (labels, CSV,
overlay, GeoJSON) on synthetic 2048 x 2048 images, beside the network's own pixel rate, measured
side by side in one run: the variants take turns, round after round, so a machine shared with
other work slows them alike; medians shown, and the ratios are the figures to compare.

- network alone: the backend's `run` on batches of 4 x 3 x 512 x 512 (ONNX Runtime fp32, and
  OpenVINO fp32 where installed, and bf16 where the CPU computes it natively), 2 threads; Mpx/s
  counts the batch's pixels. ONNX Runtime also as the runtime calls it on 2 cores: two lanes,
  each call 2 of the 4 tiles on 1 thread, two calls in flight (`engine.stages.in_flight`);
- whole command: one `nseg-infer run FILES --out DIR --device cpu` process per run, minus the
  start-up of a 64 x 64 run (each version its own), this version's code and, with `--base`,
  an earlier commit's (a git worktree, as `check_outputs.py` makes it), and this version with
  `--device openvino` where OpenVINO is installed;
- products alone: the default products of the first image's labels (from the first run) written
  by each version's `write_products`, in its own process, the writing alone timed.

    .venv/bin/python tools/bench_pace.py --base 17cc325 [--images 4] [--rounds 3] [--no-write]

`--single 256,512,1024` instead times one image at a time, as the folder watch segments it:
`Predictor.predict` of a synthetic image of each side with ONNX Runtime as one two-threaded call
of the batch and as two lanes, alternating, `--rounds` medians; it prints its table and writes
nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from bench_infer import machine, publish, synthetic_image  # noqa: E402
from check_outputs import cli_module, worktree  # noqa: E402

SECTION = "## Pace: the whole command against the network"


def command_seconds(src: Path, inputs: Path, out: Path, device: str = "cpu") -> float:
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in sorted((src / "packages").glob("*/src"))))
    cmd = [sys.executable, "-m", cli_module(src), "run", str(inputs), "--out", str(out), "--device", device]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=src, capture_output=True)
    return time.perf_counter() - t0


PRODUCTS_ONLY = """
import sys, time
from pathlib import Path
import numpy as np, tifffile
from PIL import Image
from nseg_infer.engine.config import RunConfig
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import sink_options
from nseg_infer.sinks.base import LabelledImage
from nseg_infer.sinks.outputs import DEFAULT_PRODUCTS, ProductPaths, write_products
from nseg_infer.sources.imageio import ArraySource
labels, image, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
lab = tifffile.imread(labels)
img = np.asarray(Image.open(image).convert("RGB"))
li = LabelledImage("bench", lab, int(lab.max()), ArraySource(img), (0.0, 255.0))
t0 = time.perf_counter()
write_products(ProductPaths.for_input("bench", out, DEFAULT_PRODUCTS), li,
               sink_options(RunConfig(), FileConfig(), lab.shape))
print(time.perf_counter() - t0)
"""


def products_seconds(src: Path, labels: Path, image: Path, out: Path) -> float:
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in sorted((src / "packages").glob("*/src"))))
    out.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([sys.executable, "-c", PRODUCTS_ONLY, str(labels), str(image), str(out)], env=env,
                         check=True, cwd=src, capture_output=True, text=True)
    return float(res.stdout.strip().splitlines()[-1])


def side_by_side(tool: str, rounds: int, note: str, model: str) -> str:
    """A side-by-side report's first line: the tool, the date, the machine (CPU model and flags),
    its state, and how the variants took turns."""
    return (f"Measured by `tools/{tool}` on {time.strftime('%Y-%m-%d')}: {machine()}. {note} The variants took "
            f"turns over {rounds} rounds (medians), so the ratios compare even where other work slows them "
            f"alike. Model: {model}")


def network_seconds(backend, batch: np.ndarray, calls: int) -> float:
    """Seconds per batch; a backend with lanes gets the batch split between them, as
    `Predictor.tile_outputs` splits it."""
    from nseg_infer.engine.stages import in_flight

    lanes = getattr(backend, "lanes", 1)
    step = max(1, len(batch) // lanes)
    parts = [batch[i:i + step] for i in range(0, len(batch), step)]
    for _ in in_flight(backend.run, ((k, x) for k, x in enumerate(parts)), lanes):
        pass  # warm: a new shape may be compiled on first use
    t0 = time.perf_counter()
    for _ in range(calls):
        for _ in in_flight(backend.run, ((k, x) for k, x in enumerate(parts * 2)), lanes):
            pass
    return (time.perf_counter() - t0) / calls / 2


def single_images(sides: list[int], rounds: int) -> str:
    """Seconds of `Predictor.predict` per image with one call of the batch on 2 threads against
    two lanes, the two alternating."""
    from nseg_infer.engine.backends import OrtBackend
    from nseg_infer.engine.bundle import default_bundle_path, load_bundle
    from nseg_infer.engine.predictor import Predictor, RunConfig

    bundle = load_bundle(default_bundle_path())
    preds = {n: Predictor(bundle, RunConfig(device="cpu"),
                          backend=OrtBackend(bundle, ["CPUExecutionProvider"], threads=2, lanes=n)) for n in (1, 2)}
    lines = [f"One image at a time (`Predictor.predict`), {machine()}; medians of {rounds}, alternating.", "",
             "| side | one call, 2 threads (s) | two lanes (s) |", "|---:|---:|---:|"]
    for side in sides:
        img = synthetic_image(side, seed=1)
        times: dict[int, list[float]] = {1: [], 2: []}
        for p in preds.values():
            p.predict(img)  # warm: a new tile shape may be compiled on first use
        for _ in range(rounds):
            for n, p in preds.items():
                t0 = time.perf_counter()
                p.predict(img)
                times[n].append(time.perf_counter() - t0)
        lines.append(f"| {side}² | {statistics.median(times[1]):.3f} | {statistics.median(times[2]):.3f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="an earlier commit to run beside this version")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="Nothing else ran on the machine.", help="the machine's state, in the report")
    ap.add_argument("--single", help="comma-separated sides: time one image at a time instead (prints, writes nothing)")
    a = ap.parse_args()
    if a.single:
        print(single_images([int(x) for x in a.single.split(",")], a.rounds))
        return 0
    from nseg_infer.engine import backends_openvino as ovb
    from nseg_infer.engine.backends import OrtBackend
    from nseg_infer.engine.bundle import default_bundle_path, load_bundle
    from nseg_infer.engine.cpu import cpu_bf16_native
    from PIL import Image

    bundle = load_bundle(default_bundle_path())
    nets = {"onnxruntime fp32": OrtBackend(bundle, ["CPUExecutionProvider"], threads=2, lanes=1),
            "onnxruntime fp32, two lanes": OrtBackend(bundle, ["CPUExecutionProvider"], threads=2, lanes=2)}
    if ovb.available():
        nets["openvino fp32"] = ovb.OpenVinoBackend(bundle, precision="fp32", threads=2)
        if cpu_bf16_native():  # emulated bf16 (plain AVX2) is many times slower: not worth a row
            nets["openvino bf16"] = ovb.OpenVinoBackend(bundle, precision="bf16", threads=2)
    batch = np.random.default_rng(0).normal(0.3, 0.5, (4, 3, 512, 512)).astype(np.float32)
    versions = {"this": ROOT}
    if a.base:
        versions[f"base {a.base}"] = worktree(a.base, ROOT / ".cache" / "check_outputs")
    mpx = a.images * a.side * a.side / 1e6
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big, tiny = tmp / "big", tmp / "tiny"
        big.mkdir()
        tiny.mkdir()
        for k in range(a.images):
            Image.fromarray(synthetic_image(a.side, seed=k)).save(big / f"img{k}.png")
        Image.fromarray(synthetic_image(64)).save(tiny / "tiny.png")
        for r in range(a.rounds):
            for name, net in nets.items():
                times.setdefault(name, []).append(network_seconds(net, batch, 3))
            for name, src in versions.items():
                times.setdefault(f"{name} start-up", []).append(command_seconds(src, tiny, tmp / f"o{r}t"))
                times.setdefault(name, []).append(command_seconds(src, big, tmp / f"o{r}{name[:4]}"))
            if "openvino fp32" in nets:
                times.setdefault("this, --device openvino", []).append(
                    command_seconds(ROOT, big, tmp / f"o{r}ov", "openvino"))
            labels = tmp / "o0this" / "img0.labels.tif"
            for name, src in versions.items():
                times.setdefault(f"{name} products", []).append(
                    products_seconds(src, labels, big / "img0.png", tmp / f"p{r}{name[:4]}"))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    net_px = batch.shape[0] * batch.shape[2] * batch.shape[3] / 1e6
    net_rate = {k: net_px / med[k] for k in nets}
    ort = net_rate["onnxruntime fp32"]
    lines = [side_by_side("bench_pace.py", a.rounds, a.note, "the bundled default."), "",
             "| what | Mpx/s | vs the network (ONNX Runtime fp32) |", "|---|---:|---:|"]
    for k in nets:
        how = "two calls of 2 x 3 x 512² in flight, 1 thread each" if "lanes" in k else "4 x 3 x 512², 2 threads"
        if k == "openvino bf16":
            how += (", bf16 parity passing in the bundle's report" if ovb.trusted(bundle, "bf16") else
                    ", no passing bf16 parity in the bundle's report, so `--device auto` does not take it")
        lines.append(f"| network alone, {k}, {how} | {net_rate[k]:.2f} | {net_rate[k] / ort:.2f} |")
    for name in versions:
        rate = mpx / max(med[name] - med[f"{name} start-up"], 1e-9)
        lanes = rate / net_rate["onnxruntime fp32, two lanes"]
        lines.append(f"| `nseg-infer run --device cpu`, {a.images} x {a.side}², default products, {name} "
                     f"(start-up {med[f'{name} start-up']:.1f} s subtracted) | {rate:.2f} | {rate / ort:.2f} "
                     f"(of the two lanes' rate: {lanes:.2f}) |")
    if "openvino fp32" in nets:
        rate = mpx / max(med["this, --device openvino"] - med["this start-up"], 1e-9)
        lines.append(f"| `nseg-infer run --device openvino`, {a.images} x {a.side}², default products, this "
                     f"| {rate:.2f} | {rate / ort:.2f} (of OpenVINO's own rate: {rate / net_rate['openvino fp32']:.2f}) |")
    lines += ["", f"Writing the default products of one {a.side}² image's labels (labels TIFF, CSV, overlay, "
              "GeoJSON; `write_products` alone, in each version's own process): "
              + ", ".join(f"{name} {med[f'{name} products']:.2f} s" for name in versions)
              + (f"; this version takes x{med['this products'] / med[f'{n} products']:.2f} of the time of {n}"
                 if len(versions) > 1 and (n := next(v for v in versions if v != 'this')) else "") + "."]
    return publish(SECTION, "\n".join(lines) + "\n", write=not a.no_write)


if __name__ == "__main__":
    sys.exit(main())
