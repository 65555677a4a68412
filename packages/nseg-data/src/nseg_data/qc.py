"""Label quality checks and explicit fixes.

Checks per nucleus: overlapping and empty masks (from what the reader recorded while stacking),
several connected components, holes, tiny area, and no contrast against its surroundings
(a mask drawn on background). Fixes return new label images; nothing is changed in place.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from nseg_data.atomic import atomic_path, write_text_atomic
from nseg_data.sample import Sample

KINDS = ("overlap", "empty", "components", "holes", "tiny", "no_contrast")
# How much each kind counts when ranking the worst samples for the gallery.
WEIGHTS = {"overlap": 2.0, "empty": 1.0, "components": 2.0, "holes": 1.0, "tiny": 0.5, "no_contrast": 2.0}
FIXES = ("fill-holes", "split-components", "drop-tiny")


@dataclass(frozen=True)
class QCParams:
    min_area: int = 10  # pixels; smaller masks are "tiny"
    min_contrast: float = 4.0  # gray levels between the mask and a ring around it
    ring: int = 3  # ring width in pixels


@dataclass(frozen=True)
class Issue:
    kind: str
    label: int | None  # label value in the sample's label image (None when the mask is not in it)
    value: float  # size of the problem: pixels, component count, contrast
    detail: str = ""


@dataclass(frozen=True)
class SampleQC:
    id: str
    source: str
    modality: str
    n_nuclei: int
    issues: tuple[Issue, ...]

    @property
    def severity(self) -> float:
        return float(sum(WEIGHTS[i.kind] for i in self.issues))

    def counts(self) -> dict[str, int]:
        c = Counter(i.kind for i in self.issues)
        return {k: c.get(k, 0) for k in KINDS}


@dataclass(frozen=True)
class QCReport:
    params: QCParams
    samples: tuple[SampleQC, ...]
    unlabelled: tuple[str, ...] = field(default=())

    def counts(self) -> dict[str, int]:
        total = Counter()
        for s in self.samples:
            total.update(s.counts())
        return {k: total.get(k, 0) for k in KINDS}

    def worst(self, n: int) -> list[SampleQC]:
        bad = [s for s in self.samples if s.issues]
        return sorted(bad, key=lambda s: (-s.severity, s.id))[:n]

    def to_json(self) -> dict:
        return {
            "format": "nseg-qc/1",
            "params": asdict(self.params),
            "n_samples": len(self.samples),
            "n_samples_with_issues": sum(1 for s in self.samples if s.issues),
            "counts": self.counts(),
            "unlabelled": list(self.unlabelled),
            "samples": [
                {
                    "id": s.id,
                    "source": s.source,
                    "modality": s.modality,
                    "n_nuclei": s.n_nuclei,
                    "severity": s.severity,
                    "counts": s.counts(),
                    "issues": [asdict(i) for i in s.issues],
                }
                for s in sorted(self.samples, key=lambda s: (-s.severity, s.id))
            ],
        }


def _ring_mean(gray: np.ndarray, labels: np.ndarray, sl: tuple[slice, slice], mask: np.ndarray, width: int) -> float | None:
    """Mean gray level in a ring just outside the mask, ignoring other nuclei."""
    pad = width + 1
    y0, y1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, gray.shape[0])
    x0, x1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, gray.shape[1])
    local = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    local[sl[0].start - y0 : sl[0].stop - y0, sl[1].start - x0 : sl[1].stop - x0] = mask
    ring = ndimage.binary_dilation(local, iterations=width) & ~local & (labels[y0:y1, x0:x1] == 0)
    return float(gray[y0:y1, x0:x1][ring].mean()) if ring.any() else None


def check_labels(labels: np.ndarray, image: np.ndarray | None = None, params: QCParams = QCParams()) -> list[Issue]:
    """Shape problems of each nucleus in a label image; contrast too when the image is given."""
    issues: list[Issue] = []
    gray = image.astype(np.float32).mean(axis=2) if image is not None else None
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == lab
        area = int(mask.sum())
        _cc, n_cc = ndimage.label(mask, structure=np.ones((3, 3)))
        if n_cc > 1:
            issues.append(Issue("components", lab, float(n_cc), f"{n_cc} separate pieces"))
        holes = int((ndimage.binary_fill_holes(mask) & (labels[sl] == 0)).sum())
        if holes > 0:
            issues.append(Issue("holes", lab, float(holes), f"{holes} hole pixels"))
        if area < params.min_area:
            issues.append(Issue("tiny", lab, float(area), f"{area} px < {params.min_area}"))
        if gray is not None:
            ring = _ring_mean(gray, labels, sl, mask, params.ring)
            if ring is not None:
                contrast = abs(float(gray[sl][mask].mean()) - ring)
                if contrast < params.min_contrast:
                    issues.append(Issue("no_contrast", lab, round(contrast, 3), f"contrast {contrast:.1f} gray levels"))
    return issues


def check_sample(sample: Sample, params: QCParams = QCParams()) -> SampleQC:
    assert sample.labels is not None
    issues: list[Issue] = []
    meta = sample.meta or {}
    for name in meta.get("empty_masks", []):
        issues.append(Issue("empty", None, 0.0, name))
    if meta.get("overlap_pixels", 0):
        names = meta.get("overlapping_masks", [])
        detail = f"{meta['overlap_pixels']} px shared by {len(names)} masks" + (f", e.g. {names[0]}" if names else "")
        issues.append(Issue("overlap", None, float(meta["overlap_pixels"]), detail))
    issues += check_labels(sample.labels, sample.image, params)
    return SampleQC(sample.id, sample.source, str(sample.modality), sample.n_nuclei, tuple(issues))


def check_samples(samples: list[Sample], params: QCParams = QCParams()) -> QCReport:
    labelled = [s for s in samples if s.labels is not None]
    unlabelled = tuple(s.id for s in samples if s.labels is None)
    return QCReport(params=params, samples=tuple(check_sample(s, params) for s in labelled), unlabelled=unlabelled)


# ---- fixes: each returns a new label image ----


def fill_holes(labels: np.ndarray) -> np.ndarray:
    out = labels.copy()
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        filled = ndimage.binary_fill_holes(labels[sl] == lab)
        # Only background is filled: a nucleus inside another's hole stays itself.
        out[sl][filled & (labels[sl] == 0)] = lab
    return out


def split_components(labels: np.ndarray) -> np.ndarray:
    """Every connected piece of a label becomes its own label (8-connectivity)."""
    out = labels.copy()
    next_label = int(labels.max(initial=0)) + 1
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        cc, n = ndimage.label(labels[sl] == lab, structure=np.ones((3, 3)))
        for k in range(2, n + 1):
            out[sl][cc == k] = next_label
            next_label += 1
    return out


def drop_tiny(labels: np.ndarray, min_area: int) -> np.ndarray:
    areas = np.bincount(labels.ravel())
    tiny = np.flatnonzero((areas > 0) & (areas < min_area))
    tiny = tiny[tiny > 0]
    out = labels.copy()
    out[np.isin(labels, tiny)] = 0
    return out


def apply_fixes(sample: Sample, fixes: list[str], params: QCParams = QCParams()) -> Sample:
    """Sample with its labels fixed, fixes applied in the order given."""
    unknown = [f for f in fixes if f not in FIXES]
    if unknown:
        raise ValueError(f"unknown fix {unknown[0]!r}, expected one of {', '.join(FIXES)}")
    assert sample.labels is not None
    labels = sample.labels
    for f in fixes:
        if f == "fill-holes":
            labels = fill_holes(labels)
        elif f == "split-components":
            labels = split_components(labels)
        else:
            labels = drop_tiny(labels, params.min_area)
    return Sample(
        id=sample.id, image=sample.image, labels=labels.astype(np.uint32), modality=sample.modality,
        source=sample.source, meta={**sample.meta, "fixes": list(fixes)},
    )


# ---- outputs ----

KIND_COLOURS = {"overlap": (255, 0, 255), "components": (255, 64, 0), "holes": (255, 255, 0),
                "tiny": (0, 255, 255), "no_contrast": (255, 0, 0)}


def render_case(sample: Sample, qc: SampleQC, size: int = 256) -> np.ndarray:
    """Thumbnail: all outlines in green, problem nuclei outlined in the colour of their problem."""
    from skimage.segmentation import find_boundaries

    img = sample.image.copy()
    assert sample.labels is not None
    img[find_boundaries(sample.labels, mode="inner")] = (0, 160, 0)
    for issue in qc.issues:
        if issue.label is not None:
            edge = find_boundaries(sample.labels == issue.label, mode="inner")
            img[edge] = KIND_COLOURS[issue.kind]
    from PIL import Image

    im = Image.fromarray(img)
    im.thumbnail((size, size))
    canvas = Image.new("RGB", (size, size + 28), (0, 0, 0))
    canvas.paste(im, (0, 0))
    return np.asarray(canvas)


def write_gallery(path: Path, report: QCReport, samples: dict[str, Sample], n: int = 12, size: int = 256) -> int:
    """PNG grid of the worst samples with their id and problem counts; returns how many are shown."""
    from PIL import Image, ImageDraw

    worst = report.worst(n)
    cols = min(4, max(len(worst), 1))
    rows = max(1, -(-len(worst) // cols))
    grid = Image.new("RGB", (cols * size, rows * (size + 28)), (0, 0, 0))
    draw = ImageDraw.Draw(grid)
    for k, q in enumerate(worst):
        x, y = (k % cols) * size, (k // cols) * (size + 28)
        grid.paste(Image.fromarray(render_case(samples[q.id], q, size)), (x, y))
        counts = ", ".join(f"{kind} {c}" for kind, c in q.counts().items() if c)
        draw.text((x + 3, y + size + 2), q.id[:24], fill=(255, 255, 255))
        draw.text((x + 3, y + size + 14), counts[:42], fill=(255, 200, 0))
    if not worst:
        draw.text((10, 10), "no issues found", fill=(255, 255, 255))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return len(worst)


def write_report(path: Path, report: QCReport) -> None:
    write_text_atomic(path, json.dumps(report.to_json(), indent=1) + "\n")
