"""Score a folder of predicted label images (`<id>.labels.tif`) against a labelled dataset.

A missing prediction is scored as an empty one and listed, so a partial run cannot look better
than it is. Means use `nseg_data.metrics`, the same functions training validation uses.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nseg_data.atomic import write_text_atomic
from nseg_data.errors import DataError
from nseg_data.metrics import ImageScores, mean_scores, score_image
from nseg_data.readers.label_folder import read_label_image
from nseg_data.sample import Sample

PRED_SUFFIX = ".labels.tif"


@dataclass(frozen=True)
class ImageRow:
    id: str
    modality: str
    missing: bool
    scores: ImageScores


@dataclass(frozen=True)
class ScoreReport:
    rows: tuple[ImageRow, ...]
    overall: dict[str, float]
    per_modality: dict[str, dict[str, float]]
    missing: tuple[str, ...]
    extra: tuple[str, ...]  # prediction files whose id is not in the scored set

    @property
    def dsb_score(self) -> float:
        return float(self.overall.get("dsb", 0.0))

    def to_json(self, **context: object) -> dict:
        return {
            "format": "nseg-score/1",
            "dsb_score": self.dsb_score,
            **context,
            "overall": self.overall,
            "per_modality": self.per_modality,
            "missing_predictions": list(self.missing),
            "extra_predictions": list(self.extra),
            "images": [{"id": r.id, "modality": r.modality, "missing": r.missing, **r.scores.as_dict()} for r in self.rows],
        }

    def format_table(self) -> str:
        keys = ("dsb", "f1_50", "f1_75", "precision_50", "recall_50", "aji", "pq", "dice")
        head = f"{'group':<14}{'images':>7}" + "".join(f"{k:>13}" for k in keys)
        lines = [head]
        groups = [("overall", self.overall), *sorted(self.per_modality.items())]
        for name, m in groups:
            lines.append(f"{name:<14}{int(m.get('n_images', 0)):>7}" + "".join(f"{m.get(k, float('nan')):>13.4f}" for k in keys))
        if self.missing:
            lines.append(f"missing predictions (scored as empty): {len(self.missing)}, e.g. {self.missing[0]}")
        return "\n".join(lines)


def prediction_path(pred_dir: Path, sid: str) -> Path:
    return Path(pred_dir) / f"{sid}{PRED_SUFFIX}"


def score_samples(pred_dir: Path, samples: list[Sample]) -> ScoreReport:
    """Per-image scores of every sample; a prediction of another size raises DataError naming it."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(pred_dir, "prediction folder does not exist")
    rows = []
    missing = []
    for s in sorted(samples, key=lambda s: s.id):
        if s.labels is None:
            raise DataError(s.source, f"sample {s.id} has no ground-truth labels to score against")
        p = prediction_path(pred_dir, s.id)
        if p.exists():
            pred = read_label_image(p, s.labels.shape)
        else:
            pred = np.zeros_like(s.labels)
            missing.append(s.id)
        rows.append(ImageRow(s.id, str(s.modality), not p.exists(), score_image(s.labels, pred)))
    by_mod: dict[str, list[ImageScores]] = defaultdict(list)
    for r in rows:
        by_mod[r.modality].append(r.scores)
    ids = {s.id for s in samples}
    extra = sorted(
        f.name[: -len(PRED_SUFFIX)] for f in pred_dir.glob(f"*{PRED_SUFFIX}") if f.name[: -len(PRED_SUFFIX)] not in ids
    )
    return ScoreReport(
        rows=tuple(rows),
        overall=mean_scores([r.scores for r in rows]),
        per_modality={m: mean_scores(v) for m, v in sorted(by_mod.items())},
        missing=tuple(missing),
        extra=tuple(extra),
    )


def write_json(path: Path, report: ScoreReport, **context: object) -> None:
    write_text_atomic(path, json.dumps(report.to_json(**context), indent=1) + "\n")
