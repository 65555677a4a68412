"""Mask R-CNN for nuclei on torchvision's implementation (the architecture detectron2 trains).

Two departures from torchvision's defaults, both for the runtime:
- `NucleiTransform` keeps images at native resolution unless min/max sizes are given, since
  nucleus size in pixels is what the small anchors are tuned for;
- in eval mode the model returns masks as [N, 1, M, M] probabilities in box coordinates, not
  pasted into the image: pasting N full-size float masks costs N x H x W memory (370 nuclei on a
  1 MP image is 1.5 GB), and the exported graph must stop before pasting anyway (architecture.md).
  the runtime's `nseg_infer.engine.detections.MaskRCNNMerger` turns them into a label image in numpy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _mobilenet_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from nseg_train.config import ConfigError, MaskRCNNConfig

_RESNETS = {"resnet50_fpn": resnet50, "resnet18_fpn": resnet18}


class BackboneWeightsError(ConfigError):
    """The file named by maskrcnn.backbone_weights (or --backbone-weights) cannot be used."""


class NucleiTransform(GeneralizedRCNNTransform):
    """torchvision's transform, but native resolution when `native` and no mask pasting in eval."""

    def __init__(self, *, native: bool, min_size: int, max_size: int, **kwargs) -> None:
        super().__init__(min_size, max_size, **kwargs)
        self.native = native

    def resize(self, image, target=None):
        if self.native:
            return image, target
        return super().resize(image, target)

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training:
            return result
        for pred, size, original in zip(result, image_shapes, original_image_sizes, strict=True):
            pred["boxes"] = resize_boxes(pred["boxes"], size, original)
        return result


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in detectron2's GN recipe, fewer for narrow layers.
    return nn.GroupNorm(min(32, channels // 4), channels)


def _backbone(name: str, *, pretrained_structure: bool, trainable_layers: int, fpn_channels: int = 256,
              stages: int = 4, fpn_norm: nn.Module | None = None) -> nn.Module:
    # Frozen BN with pretrained statistics (detectron2 and torchvision do the same); from scratch
    # there are no statistics to freeze, so ordinary BN learns them.
    norm = FrozenBatchNorm2d if pretrained_structure else nn.BatchNorm2d
    if name in _RESNETS:
        net = _RESNETS[name](weights=None, norm_layer=norm)
        layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers == 5:
            layers.append("bn1")
        for lname, p in net.named_parameters():
            if all(not lname.startswith(x) for x in layers):
                p.requires_grad_(False)
        # Stages C2..C(stages+1): nuclei are 5-100 px, so dropping C5 (stride 32, most of
        # ResNet-18's weights) loses little and the max-pool level still serves large nuclei.
        returned = list(range(1, stages + 1))
        widths = [net.inplanes // 8 * 2 ** (i - 1) for i in returned]
        return BackboneWithFPN(net, {f"layer{k}": str(v) for v, k in enumerate(returned)}, widths, fpn_channels,
                               extra_blocks=LastLevelMaxPool(), norm_layer=fpn_norm)
    if name == "mobilenet_v3_fpn":
        net = mobilenet_v3_large(weights=None, norm_layer=norm)
        # Stages at strides 4, 8, 16, 32 (+ max-pool level 64), like the ResNet FPN: torchvision's
        # default (strides 16 and 32 only) is far too coarse for 8-pixel nuclei.
        return _mobilenet_extractor(net, True, trainable_layers, returned_layers=[1, 2, 3, 4])
    raise ValueError(f"unknown backbone {name!r}")


def _feature_names(backbone: nn.Module) -> list[str]:
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        names = list(backbone(torch.zeros(1, 3, 64, 64)).keys())
        backbone.train(was)
    return names


def build_maskrcnn(
    *,
    backbone: str,
    num_classes: int = 2,
    pretrained_structure: bool = False,
    trainable_layers: int | None = None,
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128),
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    transform_min_size: int | None = None,
    transform_max_size: int | None = None,
    rpn_pre_nms_top_n_train: int = 3000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 3000,
    rpn_post_nms_top_n_test: int = 2000,
    rpn_batch_size_per_image: int = 512,
    rpn_nms_thresh: float = 0.7,
    box_batch_size_per_image: int = 512,
    box_positive_fraction: float = 0.25,
    box_detections_per_img: int = 1000,
    box_score_thresh: float = 0.5,
    box_nms_thresh: float = 0.3,
    box_representation_size: int = 1024,
    mask_resolution: int = 14,
    mask_head_channels: int = 256,
    mask_head_convs: int = 4,
    fpn_channels: int = 256,
    backbone_stages: int = 4,
    anchor_octaves: tuple[float, ...] = (1.0,),
    roi_sampling_ratio: int = 2,
    head_norm: str | None = None,
) -> MaskRCNN:
    """num_classes counts the background (nuclei: 2). `pretrained_structure` picks frozen BN and
    3 trainable stages, the layout pretrained weights are loaded into (`load_backbone_weights`).
    `roi_sampling_ratio` 0 is RoIAlign's adaptive sampling (ceil(roi / output) points per bin);
    `head_norm` "group" puts GroupNorm in the FPN and the mask head, which trains from scratch
    with small batches where BN statistics are noisy."""
    if trainable_layers is None:
        trainable_layers = 3 if pretrained_structure else (6 if backbone.startswith("mobilenet") else 5)
    norm = _group_norm if head_norm == "group" else None
    body = _backbone(backbone, pretrained_structure=pretrained_structure, trainable_layers=trainable_layers,
                     fpn_channels=fpn_channels, stages=backbone_stages, fpn_norm=norm)
    names = _feature_names(body)
    levels = len(names)
    octaves = tuple(float(o) for o in anchor_octaves)
    if len(anchor_sizes) == levels:
        sizes = tuple(tuple(int(round(s * o)) for o in octaves) for s in anchor_sizes)
    else:
        sizes = (tuple(int(round(s * o)) for s in anchor_sizes for o in octaves),) * levels
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(float(r) for r in aspect_ratios),) * levels)
    # The extra max-pool level serves the RPN only, as in torchvision's and detectron2's FPN.
    roi_names = [n for n in names if n != "pool"]
    box_pool = MultiScaleRoIAlign(featmap_names=roi_names, output_size=7, sampling_ratio=roi_sampling_ratio)
    mask_pool = MultiScaleRoIAlign(featmap_names=roi_names, output_size=mask_resolution, sampling_ratio=roi_sampling_ratio)
    out_ch = body.out_channels
    model = MaskRCNN(
        body,
        min_size=transform_min_size or 800,
        max_size=transform_max_size or 1333,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        rpn_nms_thresh=rpn_nms_thresh,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(out_ch * 7 * 7, box_representation_size),
        box_predictor=FastRCNNPredictor(box_representation_size, num_classes),
        box_batch_size_per_image=box_batch_size_per_image,
        box_positive_fraction=box_positive_fraction,
        box_detections_per_img=box_detections_per_img,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(out_ch, (mask_head_channels,) * mask_head_convs, 1, norm_layer=norm),
        mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes),
    )
    t = model.transform
    model.transform = NucleiTransform(
        native=transform_min_size is None, min_size=t.min_size[0], max_size=t.max_size, image_mean=t.image_mean, image_std=t.image_std
    )
    return model


def maskrcnn_from_config(cfg: MaskRCNNConfig) -> MaskRCNN:
    """The model a config describes; backbone weights are not read here (see load_backbone_weights)."""
    return build_maskrcnn(
        backbone=cfg.backbone,
        num_classes=2,
        pretrained_structure=cfg.backbone_weights is not None,
        trainable_layers=cfg.trainable_layers,
        anchor_sizes=cfg.anchor_sizes,
        aspect_ratios=cfg.aspect_ratios,
        transform_min_size=cfg.transform_min_size,
        transform_max_size=cfg.transform_max_size,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        rpn_nms_thresh=cfg.rpn_nms_thresh,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_positive_fraction=cfg.box_positive_fraction,
        box_detections_per_img=cfg.box_detections_per_img,
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        box_representation_size=cfg.box_representation_size,
        mask_resolution=cfg.mask_resolution,
        mask_head_channels=cfg.mask_head_channels,
        mask_head_convs=cfg.mask_head_convs,
        fpn_channels=cfg.fpn_channels,
        backbone_stages=cfg.backbone_stages,
        anchor_octaves=cfg.anchor_octaves,
        roi_sampling_ratio=cfg.roi_sampling_ratio,
        head_norm=cfg.head_norm,
    )


# Key prefixes under which a backbone's weights are found in files people have: a plain
# classification state_dict, a DDP-wrapped one, or a whole torchvision detection model.
_PREFIXES = ("module.", "backbone.body.", "model.")


# Classification heads and detection parts that a backbone file may carry and the body never uses.
_NOT_BODY = ("fc.", "classifier.", "num_batches_tracked")


def _normalise_keys(state: dict, mobilenet: bool) -> dict:
    if any(k.startswith(("backbone.body.", "module.backbone.body.")) for k in state):
        # A whole detection model: only its backbone body is ours to take.
        state = {k: v for k, v in state.items() if "backbone.body." in k}
    out = {}
    for k, v in state.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        if mobilenet and k.startswith("features."):
            k = k[len("features."):]
        if not (k.startswith(_NOT_BODY) or k.endswith(_NOT_BODY)):
            out[k] = v
    return out


def load_backbone_weights(model: MaskRCNN, path: str | Path, *, backbone: str) -> int:
    """Load a local state_dict into the backbone body; returns the number of tensors loaded.

    Accepts torchvision's classification weights (e.g. `ResNet50_Weights.IMAGENET1K_V1
    .get_state_dict()` saved with torch.save) and whole detection state_dicts. Every body tensor
    must be present with its shape: a silently partial load would train a half-random backbone.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: backbone weights file does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneWeightsError(f"{path}: not a readable torch state_dict ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "format" in state:
        state = state["model"]  # an nseg checkpoint
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path}: expected a state_dict (name -> tensor), got {type(state).__name__}")
    body = model.backbone.body
    want = {k: v for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    have = _normalise_keys(state, backbone.startswith("mobilenet"))
    got = {k: v for k, v in have.items() if k in want}
    if not got:
        sample = ", ".join(list(state)[:3])
        raise BackboneWeightsError(
            f"{path}: no tensor matches the {backbone} backbone (file keys look like: {sample}); "
            f"is it the weights of another network?"
        )
    missing = sorted(set(want) - set(got))
    if missing:
        raise BackboneWeightsError(
            f"{path}: {len(missing)} of {len(want)} {backbone} backbone tensors are missing, e.g. {missing[0]}; "
            "is it the weights of another network?"
        )
    # The MobileNet extractor stops at its last returned stage; later blocks are legitimately unused.
    tops = {k.split(".")[0] for k in want}
    last = max((int(t) for t in tops if t.isdigit()), default=None)
    extra = sorted(
        k for k in set(have) - set(want)
        if not (last is not None and k.split(".")[0].isdigit() and int(k.split(".")[0]) > last)
    )
    if extra:
        # e.g. ResNet-34 weights offered to ResNet-18: the shapes agree, the network does not.
        raise BackboneWeightsError(
            f"{path}: {len(extra)} tensors are not part of the {backbone} backbone, e.g. {extra[0]}; "
            "is it the weights of another network?"
        )
    bad = [(k, tuple(v.shape), tuple(want[k].shape)) for k, v in got.items() if v.shape != want[k].shape]
    if bad:
        k, have, need = bad[0]
        raise BackboneWeightsError(
            f"{path}: {len(bad)} tensors have the wrong shape for {backbone}, e.g. {k}: {have} in the file, {need} expected"
        )
    body.load_state_dict(got, strict=False)
    return len(got)
