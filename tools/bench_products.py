#!/usr/bin/env python
"""What each product of `nseg-infer run` costs: labels TIFF, CSV, overlay PNG, GeoJSON, ROI zip.

Each input is segmented once (`Predictor`, as `process_file` does); then its sinks
(`sinks.outputs.write_products`) are timed with one product at a time (best of `--repeat`), and
with the default products together (what `nseg-infer run` writes: measurement work is shared
between the CSV and the GeoJSON, so the sum of the single products is more than the default set). Inputs: the sample images (as one
group) and synthetic fluorescence-like images (`bench_infer.synthetic_image`) of `--sides`.
Results replace the "## Products" section of docs/benchmarks.md.

    .venv/bin/python tools/bench_products.py [--sides 2048,4096] [--repeat 2] [--no-write]
    .venv/bin/python tools/bench_products.py --sides 2048 --profile csv   # cProfile of one product
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from bench_infer import machine, publish, synthetic_image  # noqa: E402
from bench_models import sample_images  # noqa: E402

SECTION = "## Products"
SINGLE = ("labels", "csv", "overlay", "geojson", "rois")


def _write(predictor, seg, out: Path, products: tuple[str, ...], h: int, w: int) -> int:
    from nseg_infer.runners.file_config import FileConfig
    from nseg_infer.runners.files import sink_options
    from nseg_infer.sinks.base import LabelledImage
    from nseg_infer.sinks.outputs import ProductPaths, write_products

    paths = ProductPaths.for_input("bench", out, products)
    image = LabelledImage("bench", seg.labels, seg.max_label, seg.view, seg.norm, seg.channels, seg.scores,
                          seg.pixel_size_um)
    return write_products(paths, image, sink_options(predictor.config, FileConfig(), (h, w)))


def product_costs(predictor, files: list[Path], out: Path, repeat: int, profile: str | None = None) -> dict:
    """Seconds per product set, summed over `files` (each segmented once, outside the timing)."""
    from nseg_infer.runners.file_config import FileConfig
    from nseg_infer.runners.files import segment_source
    from nseg_infer.sinks.outputs import DEFAULT_PRODUCTS
    from nseg_infer.sources.imageio import open_image

    sets = {name: (name,) for name in SINGLE}
    sets["default"] = DEFAULT_PRODUCTS
    seconds = dict.fromkeys(sets, 0.0)
    mpx = nuclei = 0
    settings = FileConfig()  # how `nseg-infer run` reads files by default
    prof = cProfile.Profile() if profile else None
    for f in files:
        with open_image(f, region_threshold_px=settings.region_px) as raw, \
                segment_source(predictor, raw, settings.inputs, work_dir=out) as seg:
            h, w = raw.shape
            mpx += h * w / 1e6
            for name, products in sets.items():
                best = float("inf")
                for _ in range(repeat):
                    if prof is not None and name == profile:
                        prof.enable()
                    t0 = time.perf_counter()
                    n = _write(predictor, seg, out, products, h, w)
                    best = min(best, time.perf_counter() - t0)
                    if prof is not None:
                        prof.disable()
                seconds[name] += best
            nuclei += n
    if prof is not None:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    return {"mpx": mpx, "nuclei": nuclei, "seconds": seconds}


def table(rows: list[dict]) -> str:
    names = [*SINGLE, "default"]
    head = "| input | Mpx | nuclei | " + " | ".join(f"{n} s (s/Mpx)" for n in names) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(names)]
    for r in rows:
        cells = " | ".join(f"{r['seconds'][n]:.2f} ({r['seconds'][n] / r['mpx']:.3f})" for n in names)
        lines.append(f"| {r['input']} | {r['mpx']:.2f} | {r['nuclei']} | {cells} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sides", default="2048,4096", help="synthetic image sides (px)")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many writes per product")
    ap.add_argument("--model", help="bundle (default: the bundled default model)")
    ap.add_argument("--no-samples", action="store_true", help="skip the sample images")
    ap.add_argument("--profile", choices=[*SINGLE, "default"], help="print a cProfile of this product set")
    ap.add_argument("--note", default="", help="extra sentence for the report (e.g. machine load)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from nseg_infer.engine.predictor import Predictor, RunConfig
    from PIL import Image

    predictor = Predictor(args.model, RunConfig(device="cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        inputs: list[tuple[str, list[Path]]] = []
        if not args.no_samples:
            inputs.append((f"{len(sample_images())} sample images", sample_images()))
        for side in (int(s) for s in args.sides.split(",") if s):
            p = tmp / f"synthetic{side}.png"
            Image.fromarray(synthetic_image(side)).save(p, compress_level=1)
            inputs.append((f"synthetic {side} x {side}", [p]))
        for name, files in inputs:
            r = {"input": name, **product_costs(predictor, files, tmp / "out", args.repeat, args.profile)}
            print(name, {k: round(v, 3) for k, v in r["seconds"].items()}, flush=True)
            rows.append(r)
    body = (f"Measured by `tools/bench_products.py` on {time.strftime('%Y-%m-%d')}: {machine()}. "
            f"{args.note + ' ' if args.note else ''}Each input is segmented once (model: "
            f"{args.model or 'the bundled default'}), then its sinks (`write_products`) are timed per product alone and for "
            "the default set (`labels,csv,overlay,geojson`, what `nseg-infer run` writes; the CSV and the GeoJSON "
            f"share their measurement work), best of {args.repeat}. Seconds, and seconds per megapixel in "
            "brackets.\n\n" + table(rows))
    return publish(SECTION, body, write=not args.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
