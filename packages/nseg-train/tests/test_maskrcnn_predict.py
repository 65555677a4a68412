"""Mask R-CNN validation through the runtime Predictor: tiles, merging and numpy mask pasting."""

from __future__ import annotations

import numpy as np
import torch
from nseg_data.sample import Modality, Sample

from nseg_train.config import config_from_dict
from nseg_train.deploy import runtime_predictor
from nseg_train.maskrcnn import build_maskrcnn
from nseg_train.tasks import TASKS

CPU = torch.device("cpu")


def _cfg(**maskrcnn):
    return config_from_dict({
        "name": "t", "model": {"kind": "maskrcnn"}, "eval": {"halo": 16, "min_size": 4},
        "maskrcnn": {"tile": 128, "box_representation_size": 64, "mask_head_channels": 16, **maskrcnn},
    })


class GridDetector(torch.nn.Module):
    """Stands in for a trained model on a crowded image: a 6x6 nucleus every 8 px of every tile."""

    def forward(self, images):
        out = []
        for x in images:
            h, w = x.shape[-2:]
            ys, xs = np.mgrid[0:h:8, 0:w:8]
            b = np.stack([xs.ravel(), ys.ravel(), xs.ravel() + 6, ys.ravel() + 6], 1).astype(np.float32)
            n = len(b)
            out.append({
                "boxes": torch.from_numpy(b), "scores": torch.full((n,), 0.9), "labels": torch.ones(n, dtype=torch.int64),
                "masks": torch.ones(n, 1, 28, 28),
            })
        return out


def test_zero_detections_give_an_all_zero_label_image():
    cfg = _cfg(box_score_thresh=1.0)
    torch.manual_seed(0)
    # torchvision keeps scores > threshold, so 1.0 lets nothing pass. Few proposals keep it quick.
    model = build_maskrcnn(
        backbone="resnet18_fpn", box_score_thresh=1.0, box_representation_size=64, mask_head_channels=16,
        rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, box_detections_per_img=50,
    )
    rng = np.random.default_rng(0)
    for shape in ((60, 70), (200, 150)):  # smaller than a tile, and several tiles
        image = rng.integers(0, 255, (*shape, 3)).astype(np.uint8)
        sample = Sample("z", image, np.zeros(shape, np.uint32), Modality.FLUORESCENCE, "mem")
        labels = TASKS["maskrcnn"](cfg).predict(model, sample, cfg, CPU)
        assert labels.shape == shape and labels.dtype == np.uint32
        assert not labels.any()


def test_crowded_image_over_several_tiles_keeps_every_nucleus_once():
    cfg = _cfg()
    h, w = 200, 264
    model = GridDetector()
    sample = Sample("g", np.full((h, w, 3), 100, np.uint8), np.zeros((h, w), np.uint32), Modality.FLUORESCENCE, "mem")
    labels = TASKS["maskrcnn"](cfg).predict(model, sample, cfg, CPU)
    assert runtime_predictor(model, cfg, CPU).tile == 128  # several tiles: 128-px tiles, 16-px halo
    # Tile origins are multiples of 8, so the tiles' grids coincide: one nucleus per grid cell whose
    # box centre lies in the image, each kept by exactly one tile.
    expected = len(range(3, w, 8)) * len(range(3, h, 8))
    assert expected >= 370
    ids = np.unique(labels)
    assert len(ids) - 1 == expected and labels.max() == expected
    sizes = np.bincount(labels.ravel())[1:]
    assert (sizes == 36).all()  # 6x6, never merged with a neighbour nor cut at a tile seam


def test_image_smaller_than_a_tile():
    cfg = _cfg()
    labels = TASKS["maskrcnn"](cfg).predict(
        GridDetector(), Sample("s", np.full((50, 90, 3), 10, np.uint8), None, Modality.FLUORESCENCE, "mem"), cfg, CPU)
    assert labels.shape == (50, 90)
    assert labels.max() == len(range(3, 90, 8)) * len(range(3, 50, 8))


def test_a_resized_config_is_validated_at_the_model_size_and_labelled_at_the_image_size():
    cfg = config_from_dict({"name": "t", "model": {"kind": "maskrcnn"}, "data": {"resize": 64}, "eval": {"halo": 16},
                            "maskrcnn": {"tile": 128}})
    sample = Sample("s", np.full((50, 90, 3), 10, np.uint8), None, Modality.FLUORESCENCE, "mem")
    labels = TASKS["maskrcnn"](cfg).predict(GridDetector(), sample, cfg, CPU)
    # The detector sees the image resized to 64 x 64: a nucleus every 8 px of that, each brought
    # back to the 50 x 90 image by nearest neighbour.
    assert labels.shape == (50, 90)
    assert labels.max() == len(np.unique(labels)) - 1 == len(range(3, 64, 8)) ** 2
