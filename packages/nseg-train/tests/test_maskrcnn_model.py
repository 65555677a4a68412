"""Mask R-CNN builder, configs and backbone weight files (no training)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet34
from torchvision.ops.misc import FrozenBatchNorm2d

from nseg_train.checkpoint import load_model
from nseg_train.config import ConfigError, MaskRCNNConfig, config_from_dict, load_config
from nseg_train.maskrcnn import (
    BackboneWeightsError,
    build_maskrcnn,
    load_backbone_weights,
    maskrcnn_from_config,
)

SMALL = {"box_representation_size": 64, "mask_head_channels": 16}
# Few detections keep an untrained model's inference quick on a CPU (the builder allows this;
# configs insist on >= 1000).
FEW = {"box_detections_per_img": 20, "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100}


def test_builder_applies_nuclei_options():
    m = build_maskrcnn(
        backbone="resnet18_fpn", anchor_sizes=(8, 16, 32, 64, 128), aspect_ratios=(0.5, 1.0, 2.0),
        box_detections_per_img=1500, box_score_thresh=0.3, box_nms_thresh=0.35, mask_resolution=10,
        rpn_post_nms_top_n_test=1600, box_batch_size_per_image=768, **SMALL,
    )
    assert m.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert m.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert m.roi_heads.detections_per_img == 1500
    assert m.roi_heads.score_thresh == 0.3 and m.roi_heads.nms_thresh == 0.35
    assert m.roi_heads.fg_bg_sampler.batch_size_per_image == 768
    assert m.rpn._post_nms_top_n["testing"] == 1600
    assert tuple(m.roi_heads.mask_roi_pool.output_size) == (10, 10)


def test_sizes_not_matching_levels_go_to_every_level():
    m = build_maskrcnn(backbone="resnet18_fpn", anchor_sizes=(8, 16), **SMALL)
    assert m.rpn.anchor_generator.sizes == ((8, 16),) * 5
    assert m.rpn.head.cls_logits.out_channels == 6


@pytest.mark.parametrize("backbone", ["resnet18_fpn", "mobilenet_v3_fpn"])
def test_from_scratch_backbones_run_native_resolution_and_return_box_masks(backbone):
    torch.manual_seed(0)
    m = build_maskrcnn(backbone=backbone, box_score_thresh=0.0, mask_resolution=7, **SMALL, **FEW).eval()
    # From scratch: ordinary BN (nothing to freeze) and every stage trainable.
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.backbone.body.modules())
    assert not any(isinstance(x, FrozenBatchNorm2d) for x in m.backbone.body.modules())
    assert all(p.requires_grad for p in m.backbone.body.parameters())
    with torch.no_grad():
        out = m([torch.rand(3, 100, 120)])[0]
    n = len(out["boxes"])
    assert n > 0
    # Masks stay in box coordinates (14 = 2 x RoIAlign 7): pasting is numpy's job.
    assert out["masks"].shape == (n, 1, 14, 14)
    # Native resolution: boxes live in the 100 x 120 input, not a resized 800-px image.
    assert float(out["boxes"][:, 2].max()) <= 120 and float(out["boxes"][:, 3].max()) <= 100


def test_resize_mode_rescales_boxes_back():
    torch.manual_seed(0)
    m = build_maskrcnn(backbone="resnet18_fpn", transform_min_size=200, transform_max_size=400, box_score_thresh=0.0, **SMALL, **FEW)
    assert not m.transform.native
    with torch.no_grad():
        out = m.eval()([torch.rand(3, 64, 80)])[0]
    assert len(out["boxes"]) and float(out["boxes"][:, 2].max()) <= 80 and float(out["boxes"][:, 3].max()) <= 64


def test_resnet50_fpn_builds_pretrained_layout():
    m = build_maskrcnn(backbone="resnet50_fpn", pretrained_structure=True, **SMALL)
    assert isinstance(m.backbone.body.bn1, FrozenBatchNorm2d)
    # torchvision's rule: 3 trainable stages (layer2-4) when starting from pretrained weights.
    assert not m.backbone.body.layer1[0].conv1.weight.requires_grad
    assert m.backbone.body.layer2[0].conv1.weight.requires_grad


def _cfg(**kw) -> MaskRCNNConfig:
    return MaskRCNNConfig(**{**SMALL, **kw})


def test_backbone_weights_load_from_local_file(tmp_path):
    torch.manual_seed(1)
    net = resnet18()
    nn.init.constant_(net.layer3[0].conv1.weight, 0.123)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    cfg = _cfg(backbone="resnet18_fpn", backbone_weights=str(path))
    model = maskrcnn_from_config(cfg)
    n = load_backbone_weights(model, path, backbone="resnet18_fpn")
    body = model.backbone.body
    assert n == len([k for k in body.state_dict() if not k.endswith("num_batches_tracked")])
    assert torch.allclose(body.layer3[0].conv1.weight, torch.full_like(body.layer3[0].conv1.weight, 0.123))
    assert torch.equal(body.bn1.running_mean, net.bn1.running_mean)


def test_whole_detection_state_dict_is_accepted(tmp_path):
    donor = maskrcnn_from_config(_cfg(backbone="resnet18_fpn", backbone_weights="x"))
    nn.init.constant_(donor.backbone.body.layer2[0].conv1.weight, -0.5)
    torch.save(donor.state_dict(), tmp_path / "det.pth")
    model = maskrcnn_from_config(_cfg(backbone="resnet18_fpn", backbone_weights="x"))
    load_backbone_weights(model, tmp_path / "det.pth", backbone="resnet18_fpn")
    assert float(model.backbone.body.layer2[0].conv1.weight.detach().max()) == -0.5


def test_mobilenet_weights_with_features_prefix(tmp_path):
    torch.manual_seed(2)
    net = mobilenet_v3_large()
    path = tmp_path / "mnv3.pth"
    torch.save(net.state_dict(), path)
    model = maskrcnn_from_config(_cfg(backbone="mobilenet_v3_fpn", backbone_weights=str(path)))
    load_backbone_weights(model, path, backbone="mobilenet_v3_fpn")
    assert torch.equal(model.backbone.body["1"].block[0][0].weight, net.features[1].block[0][0].weight)


def test_corrupt_and_mismatched_weight_files_give_clear_errors(tmp_path):
    model = maskrcnn_from_config(_cfg(backbone="resnet18_fpn", backbone_weights="x"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(BackboneWeightsError, match=r"corrupt\.pth: not a readable"):
        load_backbone_weights(model, corrupt, backbone="resnet18_fpn")
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        load_backbone_weights(model, tmp_path / "absent.pth", backbone="resnet18_fpn")
    sd = resnet18().state_dict()
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(BackboneWeightsError, match=r"wrong shape for resnet18_fpn, e.g. conv1.weight: \(64, 3, 3, 3\)"):
        load_backbone_weights(model, tmp_path / "shape.pth", backbone="resnet18_fpn")
    # ResNet-34 holds every ResNet-18 tensor with the right shape, plus more blocks: still wrong.
    torch.save(resnet34().state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(BackboneWeightsError, match="not part of the resnet18_fpn backbone"):
        load_backbone_weights(model, tmp_path / "resnet34.pth", backbone="resnet18_fpn")
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(BackboneWeightsError, match="no tensor matches"):
        load_backbone_weights(model, unrelated, backbone="resnet18_fpn")
    partial = tmp_path / "partial.pth"
    sd = resnet18().state_dict()
    del sd["layer4.1.conv2.weight"]
    torch.save(sd, partial)
    with pytest.raises(BackboneWeightsError, match=r"missing, e.g. layer4.1.conv2.weight"):
        load_backbone_weights(model, partial, backbone="resnet18_fpn")


def test_config_section_defaults_validation_and_unet_compatibility():
    unet = load_config("unet")
    # The UNet's config dict (checkpoints, config.yaml, resume check) is unchanged by the new section.
    assert "maskrcnn" not in unet.to_dict()
    assert config_from_dict(unet.to_dict()) == unet
    base = {"name": "m", "model": {"kind": "maskrcnn"}}
    cfg = config_from_dict(base)
    assert cfg.maskrcnn.box_detections_per_img >= 1000 and min(cfg.maskrcnn.anchor_sizes) <= 8
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({**base, "maskrcnn": {"anchor_size": [8]}})
    with pytest.raises(ConfigError, match=r"needs model\.kind: maskrcnn"):
        config_from_dict({"name": "u", "maskrcnn": {"tile": 256}})
    with pytest.raises(ConfigError, match=">= 1000"):
        config_from_dict({**base, "maskrcnn": {"box_detections_per_img": 100}})
    with pytest.raises(ConfigError, match="backbone"):
        config_from_dict({**base, "maskrcnn": {"backbone": "vgg16"}})
    with pytest.raises(ConfigError, match="set together"):
        config_from_dict({**base, "maskrcnn": {"transform_min_size": 800}})
    # UNet-only checks do not apply to Mask R-CNN configs (their loss/targets fields are unused).
    config_from_dict({**base, "model": {"kind": "maskrcnn", "targets": "fg"}})
    with pytest.raises(ConfigError, match="bce_dice_dist"):
        config_from_dict({"name": "u", "model": {"kind": "unet", "targets": "fg"}, "eval": {"instances": "components"}})


def test_presets():
    paper = load_config("maskrcnn-paper")
    m = paper.maskrcnn
    assert (paper.optim.optimizer, paper.optim.lr, paper.optim.schedule) == ("sgd", 0.005, "constant")
    assert m.backbone == "resnet50_fpn" and m.box_score_thresh == 0.5
    assert paper.optim.epochs * m.iterations_per_epoch == 10_000 and paper.eval.every == 1
    ours = load_config("maskrcnn")
    assert ours.maskrcnn.backbone in ("resnet18_fpn", "mobilenet_v3_fpn")
    assert ours.maskrcnn.box_detections_per_img >= 1000
    assert ours.maskrcnn.transform_min_size is None  # native resolution
    assert ours.optim.schedule == "cosine" and ours.optim.grad_clip
    # Same photometric augmentations as the UNet default; scale stays near native resolution.
    unet = load_config("unet")
    photometric = {k: v for k, v in dataclasses.asdict(ours.augment).items() if k != "scale"}
    assert photometric == {k: v for k, v in dataclasses.asdict(unet.augment).items() if k != "scale"}
    assert 0.75 <= ours.augment.scale[0] <= ours.augment.scale[1] <= 1.35


def test_cpu_preset_is_sized_for_nuclei():
    """The preset trains on a workstation CPU and ships in a bundle under 50 MB."""
    from torch import nn

    cfg = load_config("maskrcnn")
    m = maskrcnn_from_config(cfg.maskrcnn)
    assert sum(p.numel() for p in m.parameters()) * 4 < 50e6
    assert m.backbone.out_channels == cfg.maskrcnn.fpn_channels == 128
    assert "layer4" not in dict(m.backbone.body.named_children())  # C2-C4 only
    sizes = m.rpn.anchor_generator.sizes
    assert sizes[0][0] <= 8 and sizes[-1][-1] >= 73  # DSB nuclei are about 5-73 px
    assert m.roi_heads.mask_roi_pool.sampling_ratio == 0 and m.roi_heads.box_roi_pool.sampling_ratio == 0
    convs = [x for x in m.roi_heads.mask_head.modules() if isinstance(x, nn.Conv2d)]
    assert len(convs) == 2 and all(c.out_channels == 64 for c in convs)
    assert any(isinstance(x, nn.GroupNorm) for x in m.roi_heads.mask_head.modules())
    assert any(isinstance(x, nn.GroupNorm) for x in m.backbone.fpn.modules())
    sampler = m.roi_heads.fg_bg_sampler
    assert sampler.batch_size_per_image * sampler.positive_fraction <= 64  # the mask head's batch


@pytest.mark.parametrize("bad, match", [
    ({"backbone_stages": 5}, "backbone_stages"), ({"head_norm": "batch"}, "head_norm"),
    ({"roi_sampling_ratio": -1}, "roi_sampling_ratio"), ({"anchor_octaves": [0.0]}, "anchor_octaves"),
    ({"fpn_channels": 0}, "fpn_channels"), ({"mask_head_convs": 0}, "mask_head_convs"),
])
def test_cpu_sizing_options_are_validated(bad, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"name": "m", "model": {"kind": "maskrcnn"}, "maskrcnn": bad})


def test_grad_clip_is_validated():
    with pytest.raises(ConfigError, match="grad_clip"):
        config_from_dict({"name": "m", "optim": {"grad_clip": 0}})


def test_checkpoint_model_rebuilds_without_weights_file(tmp_path):
    """load_model must not need the backbone file: the checkpoint carries the weights."""
    from nseg_train.checkpoint import FORMAT, save_atomic

    cfg = config_from_dict({"name": "m", "model": {"kind": "maskrcnn"}, "maskrcnn": {**SMALL, "backbone_weights": "/nonexistent/r18.pth"}})
    model = maskrcnn_from_config(cfg.maskrcnn)
    save_atomic({"format": FORMAT, "kind": "maskrcnn", "config": cfg.to_dict(), "model": model.state_dict()}, tmp_path / "c.pt")
    loaded, cfg2, _ = load_model(tmp_path / "c.pt")
    assert cfg2 == cfg
    assert isinstance(loaded.backbone.body.bn1, FrozenBatchNorm2d)
