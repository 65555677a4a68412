#!/usr/bin/env python
"""Inference speed of nseg-infer: megapixels per second and peak memory, ONNX Runtime vs torch eager.

Every measurement runs in a fresh child process so its peak RSS is its own. Both backends go
through the very same `nseg_infer.engine.predictor.Predictor` pipeline (read, normalise, tile, batch, blend,
watershed), only the model call differs, so the comparison is of the runtimes, not of two
pipelines. Results replace the "## Inference speed" section of docs/benchmarks.md.

    .venv/bin/python tools/bench_infer.py                        # untrained default UNet, exported here
    .venv/bin/python tools/bench_infer.py --model BUNDLE --checkpoint CKPT
    .venv/bin/python tools/bench_infer.py --sides 1024,2048 --settings 512x4,256x8 --no-write

torch is used only here, never by nseg-infer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from nseg_data.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Inference speed"


# ----------------------------------------------------------------------------------------------
# Model: a checkpoint, or the default architecture untrained (speed does not depend on weights)


def build_torch_model(checkpoint: str | None):
    """(model, config, checkpoint dict, note): a checkpoint's model, or the 'unet' preset's untrained."""
    from nseg_train.config import load_config

    if checkpoint:
        from nseg_train.checkpoint import load_model

        model, cfg, ckpt = load_model(Path(checkpoint))
        note = f"checkpoint {checkpoint}"
    else:
        from nseg_train.models import unet_from_config

        cfg = load_config("unet")
        model, ckpt = unet_from_config(cfg.model), {}
        note = f"untrained default UNet (nseg_train preset 'unet': channels {list(cfg.model.channels)})"
    return model.eval(), cfg, ckpt, note


def export_bundle(model, cfg, ckpt: dict, out: Path) -> Path:
    """The bundle `nseg-export onnx` writes (its sections from the config, as for every bundle),
    with the tiling measured here: 512 px tiles, 32 px halo, 4 tiles per call."""
    from nseg_export.onnx_export import ExportOptions, export_model

    export_model(model, cfg, ckpt, out, ExportOptions(tile=512, halo=32, batch=4))
    return out


# ----------------------------------------------------------------------------------------------
# Child: one measurement


def synthetic_image(side: int, seed: int = 0) -> np.ndarray:
    """Fluorescence-like nuclei: a 1024 px pattern of blurred discs, repeated to the side."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    base = np.zeros((1024, 1024), np.float32)
    yy, xx = np.mgrid[:1024, :1024]
    for _ in range(600):
        cy, cx, r = rng.integers(0, 1024), rng.integers(0, 1024), rng.integers(5, 14)
        base[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(120, 230)
    base = ndi.gaussian_filter(base, 1.5) + rng.normal(12, 4, base.shape)
    base = np.clip(base, 0, 255).astype(np.uint8)
    reps = -(-side // 1024)
    return np.tile(base, (reps, reps))[:side, :side]


class TorchBackend:
    name = "torch-eager"

    def __init__(self, model, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.torch, self.model = torch, model

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self.torch.inference_mode():
            # The bundle contract: probabilities, the graph's sigmoid included.
            return {"probs": self.torch.sigmoid(self.model(self.torch.from_numpy(batch))).numpy()}


def child(spec: dict) -> dict:
    from nseg_infer.engine.predictor import Predictor, RunConfig
    from nseg_infer.runners.file_config import FileConfig

    threads = spec["threads"]
    backend = None
    if spec["backend"] == "torch":
        import torch

        model, _, _, _ = build_torch_model(spec.get("checkpoint"))
        if spec.get("state_dict"):
            # The exact weights the ONNX side was exported from: untrained nets differ per init.
            model.load_state_dict(torch.load(spec["state_dict"], weights_only=True))
        backend = TorchBackend(model, threads)
    config = RunConfig(tile=spec["tile"], batch=spec["batch"], device="cpu", threads=threads)
    predictor = Predictor(spec["bundle"], config, backend=backend)
    warm = synthetic_image(512)
    predictor.predict(warm)  # session/allocator warm-up is not part of the throughput
    image = synthetic_image(spec["side"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with FileConfig().canvas(image.shape[:2], work_dir=Path(tmp)) as canvas:
            n = predictor.predict(image, labels=canvas).max_label
        seconds = time.perf_counter() - t0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {**spec, "seconds": seconds, "mpx_s": spec["side"] ** 2 / 1e6 / seconds, "peak_rss_mb": rss_kb / 1024,
            "image_mb": image.nbytes / 2**20, "nuclei": n, "backend_name": predictor.backend_name}


def run_child(spec: dict, timeout: float) -> dict:
    try:
        p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"over the {timeout:.0f} s limit"}
    if p.returncode != 0:
        return {**spec, "error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Report


def machine() -> str:
    from nseg_infer.engine.cpu import cpu_model

    cpu = cpu_model()
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    import onnxruntime

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu} ({cpu_features()}), {cores} cores available{mem}; Python {platform.python_version()}, "
            f"onnxruntime {onnxruntime.__version__}")


# The flags that decide which CPU backend and precision is fastest (and so what a figure means).
FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_features() -> str:
    """The CPU's features that matter to the model, e.g. 'avx2 avx512f avx512_bf16, no AMX'."""
    from nseg_infer.engine.cpu import cpu_flags

    flags = cpu_flags()
    have = [f for f in FEATURES if f in flags and not f.startswith("amx")]
    amx = "AMX" if {"amx_tile", "amx_bf16"} <= flags else "no AMX"
    return " ".join(have) + f", {amx}" if have else f"flags unknown, {amx}"


def table(rows: list[dict]) -> str:
    lines = ["| side (px) | Mpx | tile | batch | backend | seconds | Mpx/s | s per Mpx | peak RSS (MB) | image (MB) | nuclei |",
             "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mpx = r["side"] ** 2 / 1e6
        if "error" in r:
            lines.append(f"| {r['side']} | {mpx:.1f} | {r['tile']} | {r['batch']} | {r['backend']} | "
                         f"skipped: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['side']} | {mpx:.1f} | {r['tile']} | {r['batch']} | {r['backend_name']} | "
                     f"{r['seconds']:.1f} | {r['mpx_s']:.3f} | {r['seconds'] / mpx:.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['image_mb']:.0f} | {r['nuclei']} |")
    return "\n".join(lines)


def write_section(body: str) -> None:
    write_section_named(SECTION, body)


def publish(section: str, body: str, *, write: bool) -> int:
    """A benchmark's last step: print its report and, unless told not to, write it into its
    section of docs/benchmarks.md. Returns the exit status (0)."""
    print(body)
    if write:
        write_section_named(section, body)
    return 0


def write_section_named(section: str, body: str) -> None:
    """Replace (or append) one `## ` section of docs/benchmarks.md, atomically."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = f"{section}\n\n{body.strip()}\n\n"
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    write_text_atomic(DOC, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="bundle for the ONNX Runtime side (default: export the torch model)")
    ap.add_argument("--checkpoint", help="nseg-train checkpoint for the torch side (default: untrained default UNet)")
    ap.add_argument("--sides", default="1024,2048,4096,8192,16384")
    ap.add_argument("--settings", default="512x4,256x8,1024x1", help="TILExBATCH list; the first is the main one")
    ap.add_argument("--other-settings-sides", default="2048", help="sides measured for the non-main settings")
    ap.add_argument("--torch-sides", default="1024,2048,4096,8192", help="sides measured for torch eager")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measurement before it is skipped")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--note", default="", help="extra sentence for the report (e.g. machine load)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    sides = [int(s) for s in args.sides.split(",") if s]
    settings = [tuple(int(v) for v in s.split("x")) for s in args.settings.split(",") if s]
    other_sides = {int(s) for s in args.other_settings_sides.split(",") if s}
    torch_sides = {int(s) for s in args.torch_sides.split(",") if s}
    work = Path(tempfile.mkdtemp(prefix="nseg-bench-"))
    use_torch = not args.no_torch
    note = ""
    try:
        model, cfg, ckpt, note = build_torch_model(args.checkpoint)
    except ImportError as e:
        if not args.model:
            print(f"torch is not available ({e}) and no --model given: nothing to measure", file=sys.stderr)
            return 2
        print(f"torch side skipped: {e}", file=sys.stderr)
        use_torch = False
    if args.model:
        bundle = args.model
        if not args.checkpoint and use_torch:
            print("torch side skipped: --model given without --checkpoint, so the torch model would not be "
                  "the same model", file=sys.stderr)
            use_torch = False
        note = f"bundle {args.model}" + (f", torch from {note}" if use_torch else "")
    else:
        bundle = str(export_bundle(model, cfg, ckpt, work / "bundle"))
    state_dict = None
    if use_torch and not args.checkpoint:
        import torch

        state_dict = str(work / "weights.pt")
        torch.save(model.state_dict(), state_dict)
    specs = []
    for i, (tile, batch) in enumerate(settings):
        for side in sides:
            if i > 0 and side not in other_sides:
                continue
            specs.append({"side": side, "tile": tile, "batch": batch, "backend": "onnxruntime"})
            if use_torch and side in torch_sides:
                specs.append({"side": side, "tile": tile, "batch": batch, "backend": "torch"})
    rows = []
    for spec in specs:
        spec.update(bundle=bundle, threads=args.threads, checkpoint=args.checkpoint, state_dict=state_dict)
        print(f"side {spec['side']} tile {spec['tile']} batch {spec['batch']} {spec['backend']} ...",
              file=sys.stderr, flush=True)
        r = run_child(spec, args.timeout)
        print("   ", "error: " + r["error"] if "error" in r else f"{r['seconds']:.1f} s, {r['mpx_s']:.3f} Mpx/s, "
              f"peak {r['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
        rows.append(r)
    md = table(rows)
    print(md)
    if not args.no_write:
        body = (f"Measured by `tools/bench_infer.py` on {time.strftime('%Y-%m-%d')}: {machine()}. "
                f"Model: {note}. Synthetic fluorescence-like uint8 images (nuclei 5-14 px radius); the time is "
                "`Predictor.predict` (whole-image normalisation, tiling, batched model, blending, watershed "
                "instances), after a warm-up image, file I/O excluded. Halo 32 px. Peak RSS is the whole child "
                "process (Python, libraries, the input image and the label image included). Both backends use "
                f"{args.threads} threads and the same pipeline; only the model call differs.\n\n"
                + (args.note.strip() + "\n\n" if args.note.strip() else "") + md)
        write_section(body)
        print(f"wrote {DOC} ({SECTION})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
