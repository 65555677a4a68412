"""Instance-segmentation metrics on label images, shared by training, evaluation and scoring.

Overlaps are computed sparsely (only pairs that share pixels), so images with hundreds of
nuclei cost one pass over the pixels plus work proportional to the number of touching pairs.
Conventions when nothing is there: an image with no truth and no prediction scores 1.0 on
every ratio metric (nothing to find, nothing wrongly found).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

DSB_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


@dataclass(frozen=True)
class Overlaps:
    """Sparse overlap table between truth and prediction instances (compact indices)."""

    n_gt: int
    n_pred: int
    gt_area: np.ndarray  # (n_gt,)
    pred_area: np.ndarray  # (n_pred,)
    pair_gt: np.ndarray  # (n_pairs,) index into gt
    pair_pred: np.ndarray  # (n_pairs,) index into pred
    pair_inter: np.ndarray  # (n_pairs,) intersection in pixels

    @property
    def pair_iou(self) -> np.ndarray:
        union = self.gt_area[self.pair_gt] + self.pred_area[self.pair_pred] - self.pair_inter
        return self.pair_inter / np.maximum(union, 1)


@dataclass(frozen=True)
class Matching:
    threshold: float
    tp: int
    fp: int
    fn: int
    matched_iou_sum: float

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> float:
        """TP / (TP + FP + FN): the per-threshold term of the DSB score."""
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def panoptic_quality(self) -> float:
        """PQ = SQ * RQ = sum of matched IoU / (TP + FP/2 + FN/2)."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return 1.0 if denom == 0 else self.matched_iou_sum / denom


@dataclass(frozen=True)
class ImageScores:
    dsb: float
    f1_50: float
    f1_75: float
    precision_50: float
    recall_50: float
    aji: float
    pq: float
    dice: float
    n_gt: int
    n_pred: int

    def as_dict(self) -> dict:
        return asdict(self)


def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else float(num) / float(den)


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 0..n consecutively; returns (labels as int64, n)."""
    flat = np.asarray(labels).ravel()
    uniq, inv = np.unique(flat, return_inverse=True)
    if uniq[0] != 0:
        inv = inv + 1
        n = len(uniq)
    else:
        n = len(uniq) - 1
    return inv.astype(np.int64), n


def overlaps(gt: np.ndarray, pred: np.ndarray) -> Overlaps:
    if gt.shape != pred.shape:
        raise ValueError(f"truth {gt.shape} and prediction {pred.shape} differ in shape")
    g, ng = _compact(gt)
    p, npred = _compact(pred)
    gt_area = np.bincount(g, minlength=ng + 1)[1:].astype(np.int64)
    pred_area = np.bincount(p, minlength=npred + 1)[1:].astype(np.int64)
    both = (g > 0) & (p > 0)
    key = (g[both] - 1) * np.int64(max(npred, 1)) + (p[both] - 1)
    uk, cnt = np.unique(key, return_counts=True)
    return Overlaps(
        n_gt=ng,
        n_pred=npred,
        gt_area=gt_area,
        pred_area=pred_area,
        pair_gt=(uk // max(npred, 1)).astype(np.int64),
        pair_pred=(uk % max(npred, 1)).astype(np.int64),
        pair_inter=cnt.astype(np.int64),
    )


def match_overlaps(ov: Overlaps, threshold: float = 0.5) -> Matching:
    """One-to-one matching of pairs with IoU strictly above `threshold` (Kaggle's rule, at every threshold).

    Above 0.5 a truth can overlap at most one prediction that much, so matching is unique and
    direct; below 0.5 an assignment on overlapping pairs maximises the number of matches first
    and their total IoU second.
    """
    iou = ov.pair_iou
    sel = iou > threshold
    if threshold >= 0.5:
        tp = int(np.count_nonzero(sel))
        iou_sum = float(iou[sel].sum())
    else:
        gi, pi, w = ov.pair_gt[sel], ov.pair_pred[sel], iou[sel]
        if len(w) == 0:
            tp, iou_sum = 0, 0.0
        else:
            ug, gi_c = np.unique(gi, return_inverse=True)
            up, pi_c = np.unique(pi, return_inverse=True)
            m = np.zeros((len(ug), len(up)))
            m[gi_c, pi_c] = w
            # Each valid pair is worth 1 plus its IoU scaled below 1/min(n) in total, so the count wins;
            # a plain IoU sum could prefer one strong match over two weaker ones.
            gain = np.where(m > 0, 1.0 + m / (2 * min(m.shape)), 0.0)
            r, c = linear_sum_assignment(gain, maximize=True)
            ok = m[r, c] > 0
            tp, iou_sum = int(ok.sum()), float(m[r, c][ok].sum())
    return Matching(threshold=threshold, tp=tp, fp=ov.n_pred - tp, fn=ov.n_gt - tp, matched_iou_sum=iou_sum)


def match(gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> Matching:
    return match_overlaps(overlaps(gt, pred), threshold)


def dsb_from_overlaps(ov: Overlaps) -> float:
    return float(np.mean([match_overlaps(ov, t).accuracy for t in DSB_THRESHOLDS]))


def dsb_score(gt: np.ndarray, pred: np.ndarray) -> float:
    """DSB 2018 score of one image: mean over IoU 0.50:0.05:0.95 of TP/(TP+FP+FN)."""
    return dsb_from_overlaps(overlaps(gt, pred))


def aji_from_overlaps(ov: Overlaps) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017): each truth paired with its best-IoU
    prediction; unpaired predictions add their area to the union."""
    if ov.n_gt == 0 and ov.n_pred == 0:
        return 1.0
    inter_sum = 0
    union_sum = int(ov.gt_area.sum())
    used = np.zeros(ov.n_pred, dtype=bool)
    if len(ov.pair_inter):
        iou = ov.pair_iou
        order = np.lexsort((-iou, ov.pair_gt))  # by gt, best IoU first
        first = np.ones(len(order), dtype=bool)
        first[1:] = ov.pair_gt[order][1:] != ov.pair_gt[order][:-1]
        best = order[first]
        p, inter = ov.pair_pred[best], ov.pair_inter[best]
        inter_sum = int(inter.sum())
        union_sum += int((ov.pred_area[p] - inter).sum())
        used[p] = True
    union_sum += int(ov.pred_area[~used].sum())
    return _ratio(inter_sum, union_sum)


def aji(gt: np.ndarray, pred: np.ndarray) -> float:
    return aji_from_overlaps(overlaps(gt, pred))


def foreground_dice(gt: np.ndarray, pred: np.ndarray) -> float:
    a, b = gt > 0, pred > 0
    return _ratio(2 * np.count_nonzero(a & b), np.count_nonzero(a) + np.count_nonzero(b))


def score_image(gt: np.ndarray, pred: np.ndarray) -> ImageScores:
    """All per-image metrics from one overlap table."""
    ov = overlaps(gt, pred)
    m50 = match_overlaps(ov, 0.5)
    m75 = match_overlaps(ov, 0.75)
    return ImageScores(
        dsb=dsb_from_overlaps(ov),
        f1_50=m50.f1,
        f1_75=m75.f1,
        precision_50=m50.precision,
        recall_50=m50.recall,
        aji=aji_from_overlaps(ov),
        pq=m50.panoptic_quality,
        dice=foreground_dice(gt, pred),
        n_gt=ov.n_gt,
        n_pred=ov.n_pred,
    )


def mean_scores(rows: list[ImageScores]) -> dict[str, float]:
    """Mean over images of every metric (the DSB score is defined as this mean)."""
    if not rows:
        return {}
    keys = [k for k in rows[0].as_dict() if not k.startswith("n_")]
    out = {k: float(np.mean([getattr(r, k) for r in rows])) for k in keys}
    out["n_images"] = len(rows)
    out["n_gt"] = int(sum(r.n_gt for r in rows))
    out["n_pred"] = int(sum(r.n_pred for r in rows))
    return out
