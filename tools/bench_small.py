#!/usr/bin/env python
"""Do small images keep the network busy? `nseg-infer run` on a folder of DSB 2018-sized synthetic
images, beside the network's own pixel rate, measured side by side in one run as
`bench_pace.py` measures (the variants take turns, round after round; medians; the ratios are
the figures to compare on a machine shared with other work):

- network alone: the backend's `run` (ONNX Runtime fp32, 2 threads) on one 320 x 320 tile per
  call, four and sixteen per call, four 336 x 416 tiles (a 520 x 696 image's) and the full tile
  batch, 4 x 512 x 512; Mpx/s counts the tiles' pixels;
- whole command: `nseg-infer run FOLDER --out DIR --device cpu` (default products) on 40 images
  in DSB 2018 stage1_train's mix of sizes (of its 596 images: 302 of 256 x 256, 99 of 256 x 320,
  86 of 520 x 696, 75 of 360 x 360, 13 of 1024 x 1024, 11 of 512 x 640), in a shuffled order,
  minus the start-up of a 64 x 64 run; this version and, with `--base`, an earlier commit's
  (whose labels must equal this version's); and this version on one 2048 x 2048 image (full
  tiles), the command's own rate where tiles are not small.

Mpx/s of the command counts the images' pixels: each tile also reads a halo, so even at the
network's rate a folder reaches only (image pixels / tile pixels) of it, the ceiling reported.

    .venv/bin/python tools/bench_small.py --base main [--rounds 3] [--no-write] [--note TEXT]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from bench_infer import publish, synthetic_image  # noqa: E402
from bench_pace import command_seconds, network_seconds, side_by_side  # noqa: E402
from check_outputs import worktree  # noqa: E402

SECTION = "## Small images: DSB-sized folders against the network"
MIX = {(256, 256): 20, (256, 320): 7, (520, 696): 6, (360, 360): 5, (1024, 1024): 1, (512, 640): 1}
NETWORK = ((1, 320, 320), (4, 320, 320), (16, 320, 320), (4, 336, 416), (4, 512, 512))
FULL = (4, 512, 512)


def dsb_folder(folder: Path) -> list[tuple[int, int]]:
    """The 40 images of MIX as PNGs in a shuffled order; their shapes."""
    from PIL import Image

    shapes = [s for s, n in MIX.items() for _ in range(n)]
    random.Random(0).shuffle(shapes)
    folder.mkdir()
    for k, (h, w) in enumerate(shapes):
        Image.fromarray(synthetic_image(max(h, w), seed=k)[:h, :w]).save(folder / f"img{k:02d}.png")
    return shapes


def tile_pixels(shapes: list[tuple[int, int]]) -> int:
    """The pixels of the tiles the default model runs on for images of `shapes` (halos included)."""
    from nseg_infer.engine.bundle import default_bundle_path, load_bundle
    from nseg_infer.engine.plan import Planner
    from nseg_infer.engine.predictor import RunConfig

    planner = Planner(load_bundle(default_bundle_path()), RunConfig())
    total = 0
    for h, w in shapes:
        grid = planner.grid(h, w)
        total += len(grid) * grid.tile_shape[0] * grid.tile_shape[1]
    return total


def same_labels(a: Path, b: Path) -> bool:
    import tifffile

    names = sorted(p.name for p in a.glob("*.labels.tif"))
    return names == sorted(p.name for p in b.glob("*.labels.tif")) and all(
        np.array_equal(tifffile.imread(a / n), tifffile.imread(b / n)) for n in names)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="an earlier commit to run beside this version")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="Nothing else ran on the machine.", help="the machine's state, in the report")
    a = ap.parse_args()
    from nseg_infer.engine.backends import OrtBackend
    from nseg_infer.engine.bundle import default_bundle_path, load_bundle
    from PIL import Image

    net = OrtBackend(load_bundle(default_bundle_path()), ["CPUExecutionProvider"], threads=2, lanes=1)
    rng = np.random.default_rng(0)
    batches = {s: rng.normal(0.3, 0.5, (s[0], 3, s[1], s[2])).astype(np.float32) for s in NETWORK}
    versions = {"this": ROOT}
    if a.base:
        versions[f"base {a.base}"] = worktree(a.base, ROOT / ".cache" / "check_outputs")
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shapes = dsb_folder(tmp / "dsb")
        (tmp / "big").mkdir()
        (tmp / "tiny").mkdir()
        Image.fromarray(synthetic_image(2048)).save(tmp / "big" / "big.png")
        Image.fromarray(synthetic_image(64)).save(tmp / "tiny" / "tiny.png")
        for r in range(a.rounds):
            for s, x in batches.items():
                times.setdefault(f"net {s}", []).append(network_seconds(net, x, 2))
            for name, src in versions.items():
                times.setdefault(f"{name} start-up", []).append(command_seconds(src, tmp / "tiny", tmp / f"t{r}"))
                times.setdefault(name, []).append(command_seconds(src, tmp / "dsb", tmp / f"o{r}{name[:4]}"))
            times.setdefault("this, 2048²", []).append(command_seconds(ROOT, tmp / "big", tmp / f"b{r}"))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
        equal = {name: same_labels(tmp / "o0this", tmp / f"o0{name[:4]}") for name in versions if name != "this"}
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {s: s[0] * s[1] * s[2] / 1e6 / med[f"net {s}"] for s in NETWORK}
    full = rate[FULL]
    mpx = sum(h * w for h, w in shapes) / 1e6
    ceiling = mpx * 1e6 / tile_pixels(shapes)
    big = 2048 * 2048 / 1e6 / max(med["this, 2048²"] - med["this start-up"], 1e-9)
    lines = [side_by_side("bench_small.py", a.rounds, a.note, "the bundled default (512 px tiles, 32 px halo, "
                          "batch 4), `--device cpu` (ONNX Runtime fp32, 2 threads)."), "",
             "| what | Mpx/s | vs the network's full tiles (4 x 512²) |", "|---|---:|---:|"]
    for s in NETWORK:
        lines.append(f"| network alone, {s[0]} x {s[1]} x {s[2]} per call | {rate[s]:.2f} | {rate[s] / full:.2f} |")
    for name in versions:
        cmd = mpx / max(med[name] - med[f"{name} start-up"], 1e-9)
        lines.append(f"| `nseg-infer run`, 40 DSB-sized images ({mpx:.1f} Mpx), default products, {name} "
                     f"(start-up {med[f'{name} start-up']:.1f} s subtracted) | {cmd:.2f} | {cmd / full:.2f} "
                     f"(x{cmd / big:.2f} of the command on 2048²) |")
    lines.append(f"| `nseg-infer run`, one 2048² image (25 tiles of 480²), default products, this | {big:.2f} | "
                 f"{big / full:.2f} |")
    lines += ["", f"The 40 images' tiles hold {1 / ceiling:.2f} pixels per image pixel (each tile reads a 32 px "
              f"halo), so at the network's full-tile rate the folder would run at {ceiling:.2f} of it: that is "
              "the ceiling of the command's ratio."]
    if equal:
        lines.append("Labels of the 40 images equal to the base's: "
                     + ", ".join(f"{n}: {'yes' if ok else 'NO'}" for n, ok in equal.items()) + ".")
    return publish(SECTION, "\n".join(lines) + "\n", write=not a.no_write)


if __name__ == "__main__":
    sys.exit(main())
