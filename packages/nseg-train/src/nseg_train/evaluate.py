"""Evaluate a model on a split: metrics overall and per modality, JSON + Markdown + overlay gallery."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nseg_data.atomic import write_text_atomic
from nseg_data.metrics import ImageScores, mean_scores, score_image
from nseg_data.sample import Sample
from nseg_data.sources import source_of

from nseg_train.config import TrainConfig


@dataclass(frozen=True)
class ImageResult:
    id: str
    modality: str
    scores: ImageScores
    seconds: float
    megapixels: float
    source: str = ""  # the catalogue source (nseg_data.sources); "" for a single data set


@dataclass(frozen=True)
class EvalResult:
    rows: list[ImageResult]

    @property
    def overall(self) -> dict[str, float]:
        return mean_scores([r.scores for r in self.rows])

    def per_modality(self) -> dict[str, dict[str, float]]:
        mods = sorted({r.modality for r in self.rows})
        return {m: mean_scores([r.scores for r in self.rows if r.modality == m]) for m in mods}

    def per_source(self) -> dict[str, dict[str, float]]:
        srcs = sorted({r.source for r in self.rows})
        return {s: mean_scores([r.scores for r in self.rows if r.source == s]) for s in srcs}

    @property
    def seconds_per_megapixel(self) -> float:
        mp = sum(r.megapixels for r in self.rows)
        return sum(r.seconds for r in self.rows) / mp if mp else float("nan")

    def to_json(self) -> dict:
        per_source = self.per_source()
        return {
            "dsb_score": self.overall.get("dsb", float("nan")),
            "overall": self.overall,
            "per_modality": self.per_modality(),
            **({"per_source": per_source} if len(per_source) > 1 else {}),
            "seconds_per_megapixel": self.seconds_per_megapixel,
            "images": [{"id": r.id, "modality": r.modality, **({"source": r.source} if r.source else {}),
                        **r.scores.as_dict()} for r in self.rows],
        }


def evaluate_samples(
    model: torch.nn.Module,
    samples: list[Sample],
    cfg: TrainConfig,
    device: torch.device,
    *,
    predict: Callable[[torch.nn.Module, Sample, TrainConfig, torch.device], np.ndarray],
    keep_predictions: bool = False,
    progress=None,
) -> tuple[EvalResult, dict[str, np.ndarray]]:
    rows, preds = [], {}
    it = progress(samples) if progress else samples
    for s in it:
        t0 = time.perf_counter()
        pred = predict(model, s, cfg, device)
        dt = time.perf_counter() - t0
        rows.append(ImageResult(s.id, str(s.modality), score_image(s.labels, pred), dt, s.image.shape[0] * s.image.shape[1] / 1e6,
                                source_of(s)))
        if keep_predictions:
            preds[s.id] = pred
    return EvalResult(rows), preds


METRIC_COLUMNS = (("dsb", "DSB"), ("f1_50", "F1@0.5"), ("f1_75", "F1@0.75"), ("aji", "AJI"), ("pq", "PQ"), ("dice", "Dice"))


def markdown_table(result: EvalResult, title: str) -> str:
    head = "| subset | images | " + " | ".join(h for _, h in METRIC_COLUMNS) + " |"
    lines = [f"### {title}", "", head, "|" + "---|" * (len(METRIC_COLUMNS) + 2)]
    per_source = result.per_source()
    groups = {"overall": result.overall, **result.per_modality(),
              **({f"source {k}": v for k, v in per_source.items()} if len(per_source) > 1 else {})}
    for name, m in groups.items():
        lines.append(f"| {name} | {m['n_images']} | " + " | ".join(f"{m[k]:.3f}" for k, _ in METRIC_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_report(result: EvalResult, out_dir: Path, *, title: str, extra: dict | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = result.to_json()
    if extra:
        payload.update(extra)
    write_text_atomic(out_dir / "metrics.json", json.dumps(payload, indent=1))
    write_text_atomic(out_dir / "metrics.md", markdown_table(result, title))
