"""Mask R-CNN detections into labels, on the live path: `MaskRCNNMerger` with one tile covering
the image (its core the whole image), as `Predictor.predict` streams a one-tile image into it."""

from __future__ import annotations

import numpy as np

from nseg_infer.engine.detections import MaskRCNNMerger, nms
from nseg_infer.engine.tiling import Tile
from nseg_infer.regions import Window


def merged(boxes, masks, scores, shape) -> tuple[np.ndarray, np.ndarray]:
    whole = Window(0, shape[0], 0, shape[1])
    merger = MaskRCNNMerger(np.zeros(shape, np.uint32))
    merger.aggregate({"boxes": np.asarray(boxes), "scores": np.asarray(scores), "masks": np.asarray(masks)},
                     Tile(0, whole, whole))
    return merger.finalize()


def test_full_mask_fills_exactly_its_box():
    labels, scores = merged([[10.0, 5, 30, 15]], np.ones((1, 1, 28, 28)), [0.7], (40, 50))
    assert labels.dtype == np.uint32
    assert (labels[5:15, 10:30] == 1).all() and labels.sum() == 200
    assert scores.tolist() == [np.float32(0.7)]


def test_higher_score_wins_overlaps_and_instances_never_overlap():
    labels, scores = merged([[0.0, 0, 20, 20], [10.0, 10, 30, 30]], np.ones((2, 1, 28, 28)), [0.6, 0.9], (32, 32))
    assert scores.tolist() == [np.float32(0.9), np.float32(0.6)]
    assert (labels[10:30, 10:30] == 1).all()           # the 0.9 box is label 1 and keeps the overlap
    assert (labels[0:10, 0:20] == 2).all() and (labels[10:20, 0:10] == 2).all()


def test_a_mask_mostly_covered_by_a_kept_instance_is_a_duplicate():
    """Boxes that NMS keeps apart (IoU 0.25) whose masks overlap: the lower one is dropped."""
    masks = np.ones((2, 1, 30, 30), np.float32)
    masks[1, 0, :, 10:] = 0.0  # the second box's mask: its left third, inside the first box
    labels, scores = merged([[0.0, 0, 20, 20], [10.0, 0, 40, 20]], masks, [0.9, 0.8], (32, 48))
    assert scores.tolist() == [np.float32(0.9)] and labels.max() == 1 and labels.sum() == 400


def test_mask_is_resized_to_the_box_and_thresholded():
    m = np.zeros((1, 1, 28, 28), np.float32)
    m[..., :14] = 1.0  # left half of the box
    labels, _ = merged([[0.0, 0, 56, 10]], m, [0.9], (10, 60))
    assert labels[:, :27].all() and not labels[:, 29:].any()


def test_boxes_outside_the_image_are_clipped_or_dropped():
    labels, scores = merged([[-5.0, -5, 5, 5], [100.0, 100, 120, 120]], np.ones((2, 1, 4, 4)), [0.9, 0.8], (20, 20))
    assert len(scores) == 1 and labels[:5, :5].all() and labels.sum() == 25


def test_nms_drops_overlapping_lower_scores():
    boxes = np.array([[0.0, 0, 10, 10], [1.0, 1, 11, 11], [20.0, 20, 30, 30]])
    keep = nms(boxes, np.array([0.5, 0.9, 0.7]), 0.5)
    assert keep.tolist() == [1, 2]
