#!/usr/bin/env python
"""Every source x every model, from `nseg-train evaluate` reports: a Markdown table and a bar chart.

Each argument is NAME=REPORT_DIR (a folder holding the metrics.json that `nseg-train evaluate`
writes). The first model is the reference: the table gives every other model's change against it
per source, which is how the default is chosen (no source may fall more than 0.01 below it).

    .venv/bin/python tools/source_report.py default=runs/eval/default multi=runs/eval/multi \
        --title "validation (187 images)" --out docs/results/multi-source/val
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = (("dsb", "DSB"), ("f1_50", "F1@0.5"), ("aji", "AJI"))


def load(spec: str) -> tuple[str, dict]:
    name, _, folder = spec.partition("=")
    if not folder:
        raise SystemExit(f"error: {spec!r}: expected NAME=REPORT_DIR")
    path = Path(folder) / "metrics.json"
    try:
        return name, json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: {path}: {exc}") from exc


def groups(report: dict) -> dict[str, dict]:
    """Sources, then overall and the modalities, each as {metric: value, n_images}."""
    out = dict(report.get("per_source") or {})
    if out:
        out["mean of sources"] = {k: sum(v[k] for v in report["per_source"].values()) / len(report["per_source"])
                                  for k, _ in METRICS} | {"n_images": ""}
    out["all images"] = report["overall"]
    out.update({f"modality {m}": v for m, v in report["per_modality"].items()})
    return out


def table(models: list[tuple[str, dict]], title: str) -> str:
    ref_name, ref = models[0][0], groups(models[0][1])
    head = ["subset", "images"] + [f"{name} {h}" for name, _ in models for _, h in METRICS[:2]]
    head += [f"{name} − {ref_name} DSB" for name, _ in models[1:]]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for subset, ref_m in ref.items():
        row = [subset, str(ref_m.get("n_images", ""))]
        for _name, rep in models:
            m = groups(rep).get(subset)
            row += [f"{m[k]:.3f}" if m else "–" for k, _ in METRICS[:2]]
        for _name, rep in models[1:]:
            m = groups(rep).get(subset)
            row.append(f"{m['dsb'] - ref_m['dsb']:+.3f}" if m else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def chart(models: list[tuple[str, dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nseg_data.atomic import atomic_path

    subsets = [s for s in groups(models[0][1]) if not s.startswith("modality")]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(subsets), 3.6))
    width = 0.8 / len(models)
    for k, (name, rep) in enumerate(models):
        g = groups(rep)
        ax.bar([i + k * width for i in range(len(subsets))], [g[s]["dsb"] if s in g else 0 for s in subsets], width, label=name)
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(subsets))], subsets, fontsize=8)
    ax.set_ylabel("DSB score")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=REPORT_DIR, the reference first")
    ap.add_argument("--title", default="per source")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.png")
    args = ap.parse_args(argv)
    models = [load(s) for s in args.models]
    from nseg_data.atomic import write_text_atomic

    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = table(models, args.title)
    write_text_atomic(args.out.with_suffix(".md"), text)
    chart(models, args.out.with_suffix(".png"), args.title)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
