"""Metrics against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from nseg_data import metrics


def boxes(shape, *rects) -> np.ndarray:
    """Label image with label i+1 filling rects[i] = (y0, y1, x0, x1)."""
    lab = np.zeros(shape, np.uint32)
    for i, (y0, y1, x0, x1) in enumerate(rects, start=1):
        lab[y0:y1, x0:x1] = i
    return lab


def test_perfect_match_scores_one():
    gt = boxes((10, 10), (0, 4, 0, 4), (5, 9, 5, 9))
    s = metrics.score_image(gt, gt.copy())
    assert (s.dsb, s.f1_50, s.aji, s.pq, s.dice) == (1.0, 1.0, 1.0, 1.0, 1.0)


def test_hand_worked_iou_and_counts():
    # gt A: 4x4=16 px; pred A': 4x3=12 px inside A -> IoU 12/16 = 0.75.
    # gt B: 2x2=4 px; no prediction -> FN. pred C: 2x2 on empty ground -> FP.
    gt = boxes((10, 10), (0, 4, 0, 4), (8, 10, 8, 10))
    pred = boxes((10, 10), (0, 4, 0, 3), (5, 7, 5, 7))
    ov = metrics.overlaps(gt, pred)
    assert ov.pair_iou.tolist() == [0.75]
    m = metrics.match(gt, pred, 0.5)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1)
    assert m.precision == 0.5 and m.recall == 0.5 and m.f1 == 0.5
    assert m.accuracy == pytest.approx(1 / 3)
    # IoU 0.75 is a hit at 0.50..0.70 (5 thresholds) and not at 0.75 (strictly above) .. 0.95.
    assert metrics.dsb_score(gt, pred) == pytest.approx((5 * (1 / 3) + 5 * 0.0) / 10)
    # PQ = 0.75 / (1 + 0.5 + 0.5)
    assert m.panoptic_quality == pytest.approx(0.375)
    # AJI: A with A' (I=12, U=16); B unmatched adds 4 to U; C unused adds 4 to U -> 12/24.
    assert metrics.aji(gt, pred) == pytest.approx(0.5)
    # Dice: |gt|=20, |pred|=16, overlap 12 -> 24/36.
    assert metrics.foreground_dice(gt, pred) == pytest.approx(24 / 36)


def test_empty_prediction():
    gt = boxes((6, 6), (0, 2, 0, 2), (3, 5, 3, 5))
    s = metrics.score_image(gt, np.zeros_like(gt))
    assert (s.dsb, s.f1_50, s.recall_50, s.aji, s.pq, s.dice) == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert s.precision_50 == 1.0  # no prediction made, none wrong
    assert (s.n_gt, s.n_pred) == (2, 0)


def test_empty_truth():
    pred = boxes((6, 6), (0, 2, 0, 2))
    s = metrics.score_image(np.zeros_like(pred), pred)
    assert (s.dsb, s.f1_50, s.precision_50, s.aji, s.pq, s.dice) == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert s.recall_50 == 1.0
    assert (s.n_gt, s.n_pred) == (0, 1)


def test_both_empty_scores_one():
    z = np.zeros((5, 5), np.uint32)
    s = metrics.score_image(z, z)
    assert (s.dsb, s.f1_50, s.aji, s.pq, s.dice) == (1.0, 1.0, 1.0, 1.0, 1.0)


def test_threshold_below_half_uses_count_maximising_assignment():
    # 1-D strips make the IoUs easy: gt A = cols 0..9, gt B = cols 10..13.
    gt = np.zeros((1, 20), np.uint32)
    gt[0, 0:10] = 1
    gt[0, 10:14] = 2
    pred = np.zeros((1, 20), np.uint32)
    pred[0, 6:12] = 1  # X: IoU(A,X) = 4/12 = 0.333, IoU(B,X) = 2/8 = 0.25
    pred[0, 0:6] = 2  # Y: IoU(A,Y) = 6/10 = 0.6
    # At 0.2: A-Y and B-X both match (2 TP).
    m = metrics.match(gt, pred, 0.2)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.matched_iou_sum == pytest.approx(0.6 + 0.25)

    gt2 = np.zeros((1, 20), np.uint32)
    gt2[0, 0:8] = 1  # A: 8 px
    gt2[0, 8:12] = 2  # B: 4 px
    pred2 = np.zeros((1, 20), np.uint32)
    pred2[0, 0:9] = 1  # X: IoU(A,X)=8/9, IoU(B,X)=1/12
    pred2[0, 9:12] = 3  # Z: IoU(B,Z)=3/4
    pred2[0, 12:16] = 2  # W: no overlap
    m2 = metrics.match(gt2, pred2, 0.05)
    assert (m2.tp, m2.fp, m2.fn) == (2, 1, 0)

    # Where the largest IoU sum keeps fewer matches: A-X alone (0.53) beats A-Y + B-X (0.21 + 0.21).
    ov = metrics.Overlaps(
        n_gt=2, n_pred=2, gt_area=np.array([13, 10]), pred_area=np.array([13, 10]),
        pair_gt=np.array([0, 0, 1]), pair_pred=np.array([0, 1, 0]), pair_inter=np.array([9, 4, 4]),
    )  # IoU(A,X)=9/17, IoU(A,Y)=4/19, IoU(B,X)=4/19
    mm = metrics.match_overlaps(ov, 0.2)
    assert mm.tp == 2
    assert metrics.match_overlaps(ov, 0.5).tp == 1


def test_threshold_is_strict():
    gt = np.zeros((1, 4), np.uint32)
    gt[0, :2] = 1
    pred = np.zeros((1, 4), np.uint32)
    pred[0, 1:3] = 1  # IoU 1/3
    assert metrics.match(gt, pred, 1 / 3).tp == 0
    assert metrics.match(gt, pred, 0.3).tp == 1


def test_label_values_need_not_be_consecutive():
    gt = boxes((8, 8), (0, 3, 0, 3), (4, 8, 4, 8))
    pred = np.where(gt == 1, 70000, np.where(gt == 2, 5, 0)).astype(np.uint32)
    assert metrics.dsb_score(gt, pred) == 1.0


def test_mean_scores_over_images():
    gt = boxes((6, 6), (0, 2, 0, 2))
    rows = [metrics.score_image(gt, gt), metrics.score_image(gt, np.zeros_like(gt))]
    m = metrics.mean_scores(rows)
    assert m["dsb"] == 0.5 and m["n_images"] == 2 and m["n_gt"] == 2 and m["n_pred"] == 1


def test_many_nuclei_runs_and_is_right():
    # 24x24 grid of 8x8 nuclei = 576; shifting the prediction one pixel gives IoU 56/72 = 0.78 each.
    gt = np.zeros((240, 240), np.uint32)
    k = 0
    for y in range(0, 240, 10):
        for x in range(0, 240, 10):
            k += 1
            gt[y + 1 : y + 9, x + 1 : x + 9] = k
    pred = np.roll(gt, 1, axis=1)
    s = metrics.score_image(gt, pred)
    assert s.n_gt == 576 and s.n_pred == 576
    assert s.f1_50 == 1.0 and s.f1_75 == 1.0
    assert s.dsb == pytest.approx(0.6)  # hits at 0.50..0.75, misses at 0.80..0.95
