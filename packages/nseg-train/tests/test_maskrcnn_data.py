"""Detection dataset and joint v2 augmentation: boxes, masks and image stay consistent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nseg_data.dataset import load_kaggle_folder

from nseg_train.config import AugmentConfig, config_from_dict
from nseg_train.detection_data import (
    DetectionDataset,
    boxes_from_masks,
    build_augmentation,
    collate_detection,
    instance_targets,
    prepare_detection,
    rescale,
    to_tv,
)

SAMPLE = Path(__file__).resolve().parents[3] / "examples" / "sample" / "stage1_train"


@pytest.fixture(scope="module")
def samples(synth_data):
    """The repository's real sample images when present (crowded, irregular nuclei), else synthetic."""
    root = SAMPLE if SAMPLE.is_dir() else synth_data[0]
    res = load_kaggle_folder(root)
    assert res.samples and not res.errors
    return res.samples


def _cfg(**augment):
    return config_from_dict({
        "name": "t", "model": {"kind": "maskrcnn"}, "data": {"crop_size": 128, "crops_per_image": 3},
        "augment": augment, "maskrcnn": {"box_representation_size": 64},
    })


def test_instance_targets_match_labels():
    labels = np.zeros((20, 30), np.uint32)
    labels[2:5, 3:9] = 4
    labels[10:20, 25:30] = 7
    boxes, masks = instance_targets(labels)
    assert boxes.tolist() == [[3, 2, 9, 5], [25, 10, 30, 20]]
    assert masks.shape == (2, 20, 30) and masks[0].sum() == 18 and masks[1].sum() == 50
    b, m = instance_targets(np.zeros((5, 6), np.uint32))
    assert b.shape == (0, 4) and m.shape == (0, 5, 6)


def test_flips_and_rot90_move_boxes_with_masks_exactly(samples):
    aug = build_augmentation(AugmentConfig(flips=True, rot90=True, invert_p=0.5, grayscale_p=0.5, colour=0.2))
    s = samples[0]
    labels = s.labels[:97, :131]  # odd, non-square: off-by-one errors in rotation would show
    img, target = to_tv(s.image[:97, :131].astype(np.float32) / 255, labels)
    n = len(target["boxes"])
    assert n > 3
    shapes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_img, out = aug(img, target)
        shapes.add(tuple(out_img.shape[-2:]))
        assert out["masks"].shape[0] == n and out["masks"].shape[-2:] == out_img.shape[-2:]
        assert torch.equal(out["boxes"].as_subclass(torch.Tensor), boxes_from_masks(out["masks"]))
        assert int(out["masks"].sum()) == int(target["masks"].sum())
    assert shapes == {(97, 131), (131, 97)}  # rotations happened


def test_rescale_moves_boxes_with_masks(samples):
    s = samples[1]
    img, target = to_tv(s.image[:120, :120].astype(np.float32), s.labels[:120, :120])
    out_img, out = rescale(img, target, (180, 180))
    assert out_img.shape[-2:] == (180, 180)
    keep = out["masks"].flatten(1).bool().any(1)
    v2_boxes = out["boxes"].as_subclass(torch.Tensor)[keep]
    # Nearest resampling moves a mask edge by at most a pixel relative to the exactly scaled box.
    assert torch.allclose(v2_boxes, boxes_from_masks(out["masks"][keep]), atol=1.01)


def test_dataset_items_are_consistent_reproducible_and_crowded(samples):
    cfg = _cfg(scale=[0.7, 1.4], contrast=0.2, colour=0.1, grayscale_p=0.3, invert_p=0.3, noise=0.01)
    ds = DetectionDataset(prepare_detection(samples, cfg), cfg, seed=3)
    assert len(ds) == len(samples) * 3
    most = 0
    for i in range(len(ds)):
        img, t = ds[i]
        assert img.dtype == torch.float32 and img.shape[0] == 3
        n = len(t["boxes"])
        most = max(most, n)
        assert t["masks"].shape == (n, *img.shape[-2:]) and t["masks"].dtype == torch.uint8
        assert torch.equal(t["labels"], torch.ones(n, dtype=torch.int64))
        assert bool(t["masks"].flatten(1).any(1).all())  # no empty instance survives
        assert torch.equal(t["boxes"], boxes_from_masks(t["masks"]))
        assert (t["boxes"][:, 2] > t["boxes"][:, 0]).all() and (t["boxes"][:, 3] > t["boxes"][:, 1]).all()
    assert most >= 10
    a_img, a_t = ds[2]
    b_img, b_t = ds[2]
    assert torch.equal(a_img, b_img) and torch.equal(a_t["masks"], b_t["masks"])
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], a_img) or ds[2][0].shape != a_img.shape
    images, targets = collate_detection([ds[0], ds[1]])
    assert len(images) == len(targets) == 2


def test_photometric_touches_image_only():
    cfg = _cfg(flips=False, rot90=False, invert_p=1.0)
    labels = np.zeros((64, 64), np.uint32)
    labels[10:20, 10:20] = 1
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    from nseg_data.sample import Modality, Sample

    s = Sample("a", image, labels, Modality.FLUORESCENCE, "mem")
    items = prepare_detection([s], cfg)
    ds = DetectionDataset(items, cfg, seed=0)
    img, t = ds[0]
    assert torch.allclose(img, torch.from_numpy(1.0 - items[0].image.transpose(2, 0, 1)), atol=1e-6)
    assert t["boxes"].tolist() == [[10, 10, 20, 20]]


def test_iterations_per_epoch_sets_dataset_length():
    cfg = config_from_dict({"name": "t", "model": {"kind": "maskrcnn"}, "optim": {"batch_size": 3}, "maskrcnn": {"iterations_per_epoch": 7}})
    labels = np.zeros((40, 40), np.uint32)
    from nseg_data.sample import Modality, Sample

    s = Sample("a", np.zeros((40, 40, 3), np.uint8), labels, Modality.FLUORESCENCE, "mem")
    ds = DetectionDataset(prepare_detection([s], cfg), cfg, seed=0)
    assert len(ds) == 21
    _, t = ds[0]  # an image without nuclei is a valid (negative) training item
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 40, 40)
