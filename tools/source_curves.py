#!/usr/bin/env python
"""Each candidate's validation curve per source, from training logs: one panel per source (DSB
score against epoch), one line per run, and a dashed line for a reference figure per source (the
shipped default's tuned validation score).

Each run is NAME=LOG.csv or NAME=LOG.csv@OFFSET (OFFSET: the epochs trained before that log, for a
run continued from another's weights). Sources are read from the log's `val_dsb_<source>` and `val_f1_50_<source>` columns.

    .venv/bin/python tools/source_curves.py "maskrcnn bf16=runs/maskrcnn-multi/log.csv" \
        "maskrcnn fp32=runs/maskrcnn-multi-fp32/log.csv@4" --reference dsb2018=0.549 aitslab=0.610 \
        tnbc=0.230 --out docs/results/multi-source/maskrcnn-curves.png
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

PREFIX = "val_dsb_"


def read_curve(spec: str) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    """(name, {source: [(epoch, DSB), ...]}) of one NAME=LOG[@OFFSET] argument; epochs count from 1."""
    name, _, rest = spec.partition("=")
    path, _, offset = rest.partition("@")
    if not path:
        raise SystemExit(f"error: {spec!r}: expected NAME=LOG.csv[@OFFSET]")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise SystemExit(f"error: {path}: {e}") from e
    # A source has both its DSB and its F1 column (val_dsb_raw and val_dsb_source_mean are not sources).
    columns = set(rows[0]) if rows else set()
    sources = [c[len(PREFIX):] for c in sorted(columns) if c.startswith(PREFIX) and f"val_f1_50_{c[len(PREFIX):]}" in columns]
    if not sources:
        raise SystemExit(f"error: {path}: no per-source validation columns ({PREFIX}<source>)")
    curves: dict[str, list[tuple[int, float]]] = {s: [] for s in sources}
    for r in rows:
        for s in sources:
            if r.get(PREFIX + s):
                curves[s].append((int(r["epoch"]) + 1 + int(offset or 0), float(r[PREFIX + s])))
    return name, curves


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=LOG.csv[@OFFSET]")
    ap.add_argument("--reference", nargs="*", default=[], help="SOURCE=DSB: the default's figure per source")
    ap.add_argument("--reference-name", default="shipped default (tuned)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_curve(s) for s in a.runs]
    ref = {k: float(v) for k, _, v in (r.partition("=") for r in a.reference)}
    sources = sorted({s for _, c in runs for s in c})
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 3.4), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=True):
        for name, curves in runs:
            pts = curves.get(source, [])
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        if source in ref:
            ax.axhline(ref[source], color="k", ls="--", lw=1, label=a.reference_name)
        ax.set_title(source)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation DSB")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
