"""Frozen, typed training configs loaded from YAML presets.

Unknown keys are errors: a typo in a preset must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from nseg_data.sample import Modality

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class DataConfig:
    normalization: Literal["percentile", "scale_range"] = "percentile"
    low_percentile: float = 1.0
    high_percentile: float = 99.8
    resize: int | None = None  # the seed study resized every image to 512x512
    crop_size: int = 256
    crops_per_image: int = 2
    crop_sampler: Literal["random", "pos_neg"] = "random"
    modality_balance: float = 0.5  # sampling weight per image ∝ count(modality) ** -balance
    # With several sources (a catalogue), a source's share of the crops ∝ its image count ** (1 - balance):
    # 0 draws images uniformly, 1 gives every source the same share. Modality balance applies within a source.
    source_balance: float = 0.0
    # Train and validate only on these modalities (as the split records them): an expert, e.g. for H&E.
    modalities: tuple[str, ...] | None = None
    # Enlarge each training image whose median nucleus (equivalent diameter, from its labels) is
    # smaller than this many px to it before crops are drawn (augment.scale then jitters); larger
    # nuclei stay at their own size. The bundle records it (`scale.min_nucleus_diameter_px`), and
    # the runtime measures each image's nuclei and enlarges it the same way.
    min_nucleus_diameter: float | None = None
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.crop_size < 32 or self.crop_size % 16:
            raise ConfigError(f"data.crop_size must be a multiple of 16 and >= 32, got {self.crop_size}")
        if self.crops_per_image < 1:
            raise ConfigError("data.crops_per_image must be >= 1")
        if not 0 <= self.modality_balance <= 1:
            raise ConfigError("data.modality_balance must be in [0, 1]")
        if not 0 <= self.source_balance <= 1:
            raise ConfigError("data.source_balance must be in [0, 1]")
        if self.modalities is not None:
            known = {m.value for m in Modality}
            if not self.modalities or set(self.modalities) - known:
                raise ConfigError(f"data.modalities must be a non-empty list of {', '.join(sorted(known))}; "
                                  f"got {list(self.modalities)}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ConfigError("data percentiles must satisfy 0 <= low < high <= 100")
        if self.min_nucleus_diameter is not None:
            if not 4 <= self.min_nucleus_diameter <= 200:
                raise ConfigError(f"data.min_nucleus_diameter must be 4-200 px, got {self.min_nucleus_diameter}")
            if self.resize is not None:
                raise ConfigError("data.min_nucleus_diameter and data.resize both set the scale; choose one")
            if self.crop_sampler != "random":
                raise ConfigError("data.min_nucleus_diameter needs crop_sampler: random (pos_neg crops are not rescaled)")


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    scale: tuple[float, float] = (1.0, 1.0)
    contrast: float = 0.0  # max relative contrast change
    brightness: float = 0.0
    gamma: float = 0.0
    colour: float = 0.0  # per-channel gain/offset jitter (stain variation)
    hed: float = 0.0  # H&E stain jitter in HED optical-density space (Tellez et al. 2018); colour images only
    grayscale_p: float = 0.0
    invert_p: float = 0.0
    noise: float = 0.0
    blur_p: float = 0.0
    # Inversion and grayscale only for grey images: each modality keeps its look (see augment.photometric).
    keep_look: bool = False

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ConfigError(f"augment.scale must be (low, high) with 0 < low <= high, got {self.scale}")
        for name in ("grayscale_p", "invert_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name} must be a probability")
        if not 0 <= self.hed < 1:
            raise ConfigError(f"augment.hed must be in [0, 1), got {self.hed}")


@dataclass(frozen=True)
class ModelConfig:
    kind: Literal["unet", "maskrcnn"] = "unet"
    targets: Literal["fg", "fg_dist"] = "fg_dist"
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    norm: str = "batch"
    dropout: float = 0.0
    # Auxiliary output heads on this many decoder levels below the output (deep supervision,
    # nnU-Net style). Training only: the heads are not part of the exported graph.
    deep_supervision: int = 0

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.channels) - 1:
            raise ConfigError("model.strides must have one entry fewer than model.channels")
        if not 0 <= self.deep_supervision <= len(self.strides) - 1:
            raise ConfigError(f"model.deep_supervision must be in [0, {len(self.strides) - 1}] "
                              f"(decoder levels below the output), got {self.deep_supervision}")

    @property
    def out_channels(self) -> int:
        return 1 if self.targets == "fg" else 2

    @property
    def size_divisor(self) -> int:
        d = 1
        for s in self.strides:
            d *= s
        return d


@dataclass(frozen=True)
class OptimConfig:
    # sgd uses momentum 0.9, detectron2's SOLVER.MOMENTUM default, which the seed study kept.
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: Literal["constant", "cosine", "onecycle"] = "cosine"
    warmup_epochs: int = 1
    epochs: int = 60
    batch_size: int = 8
    loss: Literal["dice", "bce_dice_dist"] = "bce_dice_dist"
    amp: bool = True
    grad_clip: float | None = None  # max global L2 norm of the gradients; None: no clipping
    # Exponential moving average of the weights (and BatchNorm statistics), updated every step
    # with this decay; 0 disables it. With it on, validation, best.pt and exports use the
    # averaged weights, and the log also scores the raw ones (val_dsb_raw).
    ema: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("optim.lr, optim.epochs and optim.batch_size must be positive")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"optim.ema must be in [0, 1) (0: no weight averaging), got {self.ema}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError("optim.grad_clip must be positive (or null: no clipping)")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 2
    instances: Literal["watershed", "components"] = "watershed"
    fg_threshold: float = 0.5
    seed_threshold: float = 0.5
    min_seed_area: int = 3
    min_size: int = 12
    seed_h: float = 0.0  # > 0: h-maxima seeds (nseg_infer.engine.instances)
    # Watershed overrides per inferred modality, e.g. {histology: {seed_threshold: 0.6}}; set by tune.
    by_modality: dict[str, dict[str, float]] | None = None
    tile: int = 512
    halo: int = 32
    max_val_images: int | None = None

    def __post_init__(self) -> None:
        from nseg_infer.engine.instances import WatershedParams, check_by_modality

        if self.every < 1:
            raise ConfigError("eval.every must be >= 1")
        try:
            WatershedParams(self.fg_threshold, self.seed_threshold, self.min_seed_area, self.min_size, self.seed_h)
            check_by_modality(self.by_modality)
        except ValueError as exc:
            raise ConfigError(f"eval: {exc}") from exc
        if self.tile % 16 or self.halo < 0 or 2 * self.halo >= self.tile:
            raise ConfigError("eval.tile must be a multiple of 16 and eval.halo in [0, tile/2)")


BACKBONES = ("resnet50_fpn", "resnet18_fpn", "mobilenet_v3_fpn")


@dataclass(frozen=True)
class MaskRCNNConfig:
    """Mask R-CNN (torchvision) tuned for nuclei; only read when model.kind is maskrcnn.

    Nuclei are 8-100 px and up to several hundred per image, so the COCO defaults (anchors 32-512,
    100 detections, 512 ROI samples) miss small and crowded nuclei.
    """

    backbone: Literal["resnet50_fpn", "resnet18_fpn", "mobilenet_v3_fpn"] = "resnet18_fpn"
    # A local state_dict of the classification network (e.g. torchvision's ImageNet weights saved
    # with torch.save); None trains from scratch. Never downloaded at run time.
    backbone_weights: str | None = None
    # Backbone stages left trainable; None: 3 with pretrained weights, all without (torchvision's rule).
    trainable_layers: int | None = None
    # One size per FPN level (5 levels) when there are 5, else every size at every level.
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # None keeps native resolution (the default: nuclei sizes are physical); numbers give
    # torchvision's resize (shorter side to min, longer side at most max), as detectron2 does.
    transform_min_size: int | None = None
    transform_max_size: int | None = None
    rpn_pre_nms_top_n_train: int = 3000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 3000
    rpn_post_nms_top_n_test: int = 2000
    rpn_batch_size_per_image: int = 512
    rpn_nms_thresh: float = 0.7
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_detections_per_img: int = 1000
    box_score_thresh: float = 0.5
    box_nms_thresh: float = 0.3
    box_representation_size: int = 1024
    # RoIAlign output size of the mask head; predicted masks are twice this (14 -> 28x28).
    mask_resolution: int = 14
    mask_head_channels: int = 256
    mask_head_convs: int = 4
    # Sized for nuclei rather than COCO (the cost of a step lies in the heads, not the backbone):
    # FPN width, ResNet stages fed to the FPN (3: C2-C4), anchor sizes x octave multipliers,
    # RoIAlign sampling (0: adaptive, ceil(roi / output) points per bin) and GroupNorm in the
    # FPN and mask head ("group") for training from scratch with small batches.
    fpn_channels: int = 256
    backbone_stages: int = 4
    anchor_octaves: tuple[float, ...] = (1.0,)
    roi_sampling_ratio: int = 2
    head_norm: Literal["group"] | None = None
    mask_threshold: float = 0.5
    # Fixed tile of the exported graph and of validation, so a validation score is the runtime's;
    # the tile overlap is eval.halo, as for the UNet.
    tile: int = 512
    # detectron2 counts iterations, not epochs. When set, one "epoch" is this many optimizer steps
    # of modality-balanced random crops, so optim.epochs x iterations_per_epoch is the iteration
    # budget and eval.every counts these blocks (the paper preset: 10 x 1000, eval every 1).
    iterations_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"maskrcnn.backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        max_layers = 6 if self.backbone.startswith("mobilenet") else 5
        if self.trainable_layers is not None and not 0 <= self.trainable_layers <= max_layers:
            raise ConfigError(f"maskrcnn.trainable_layers must be in [0, {max_layers}] for {self.backbone}")
        if not self.anchor_sizes or any(s <= 0 for s in self.anchor_sizes):
            raise ConfigError("maskrcnn.anchor_sizes must be positive sizes in pixels")
        if not self.aspect_ratios or any(r <= 0 for r in self.aspect_ratios):
            raise ConfigError("maskrcnn.aspect_ratios must be positive")
        lo, hi = self.transform_min_size, self.transform_max_size
        if (lo is None) != (hi is None):
            raise ConfigError("maskrcnn.transform_min_size and transform_max_size are set together (or both null: native resolution)")
        if lo is not None and not 0 < lo <= hi:
            raise ConfigError("maskrcnn.transform_min_size must satisfy 0 < min <= max")
        if self.box_detections_per_img < 1000:
            # Crowded DSB images hold 370+ nuclei per image, and tiles overlap.
            raise ConfigError(f"maskrcnn.box_detections_per_img must be >= 1000, got {self.box_detections_per_img}")
        if self.rpn_post_nms_top_n_test < self.box_detections_per_img:
            raise ConfigError("maskrcnn.rpn_post_nms_top_n_test must be >= box_detections_per_img (proposals bound detections)")
        if not 2 <= self.backbone_stages <= 4:
            raise ConfigError(f"maskrcnn.backbone_stages must be 2, 3 or 4, got {self.backbone_stages}")
        if not self.anchor_octaves or any(o <= 0 for o in self.anchor_octaves):
            raise ConfigError("maskrcnn.anchor_octaves must be positive multipliers")
        if self.roi_sampling_ratio < 0:
            raise ConfigError("maskrcnn.roi_sampling_ratio must be >= 0 (0: adaptive)")
        if self.head_norm not in (None, "group"):
            raise ConfigError(f"maskrcnn.head_norm must be null or 'group', got {self.head_norm!r}")
        if self.head_norm == "group" and (self.fpn_channels % 8 or self.mask_head_channels % 8):
            raise ConfigError("maskrcnn.head_norm 'group' needs fpn_channels and mask_head_channels divisible by 8")
        for name in ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                     "rpn_batch_size_per_image", "box_batch_size_per_image", "box_representation_size",
                     "mask_resolution", "mask_head_channels", "mask_head_convs", "fpn_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"maskrcnn.{name} must be >= 1")
        for name in ("rpn_nms_thresh", "box_positive_fraction", "box_score_thresh", "box_nms_thresh", "mask_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"maskrcnn.{name} must be in [0, 1]")
        if self.tile % 32 or self.tile < 64:
            raise ConfigError("maskrcnn.tile must be a multiple of 32 and >= 64")
        if self.iterations_per_epoch is not None and self.iterations_per_epoch < 1:
            raise ConfigError("maskrcnn.iterations_per_epoch must be >= 1 (or null: one pass over the crops)")

    # The names the bundle's post-processing uses (architecture.md), read by nseg-export.
    @property
    def score_threshold(self) -> float:
        return self.box_score_thresh

    @property
    def nms_threshold(self) -> float:
        return self.box_nms_thresh


@dataclass(frozen=True)
class TrainConfig:
    name: str
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    maskrcnn: MaskRCNNConfig = field(default_factory=MaskRCNNConfig)

    def __post_init__(self) -> None:
        if self.model.kind == "maskrcnn" and 2 * self.eval.halo >= self.maskrcnn.tile:
            raise ConfigError(f"eval.halo ({self.eval.halo}) must be less than half of maskrcnn.tile ({self.maskrcnn.tile})")
        if self.model.kind != "unet":
            if self.data.min_nucleus_diameter is not None:
                raise ConfigError("data.min_nucleus_diameter is for the UNet (the Mask R-CNN resizes by maskrcnn.min_size)")
            return
        if self.model.targets == "fg" and self.eval.instances == "watershed":
            raise ConfigError("watershed instances need a distance output (model.targets: fg_dist)")
        if self.optim.loss == "bce_dice_dist" and self.model.targets != "fg_dist":
            raise ConfigError("optim.loss bce_dice_dist needs model.targets: fg_dist")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # UNet configs (and their checkpoints and resume checks) stay exactly as before the section existed.
        if self.model.kind != "maskrcnn":
            del d["maskrcnn"]
        # Likewise a model without auxiliary heads, or a run without weight averaging, describes itself as before the option existed,
        # so `--init` and `--resume` still match checkpoints written without it.
        if not self.model.deep_supervision:
            del d["model"]["deep_supervision"]
        if not self.optim.ema:
            del d["optim"]["ema"]
        if self.data.modalities is None:
            del d["data"]["modalities"]
        if self.data.min_nucleus_diameter is None:
            del d["data"]["min_nucleus_diameter"]
        if not self.data.source_balance:
            del d["data"]["source_balance"]
        if not self.augment.keep_look:
            del d["augment"]["keep_look"]
        return d

    def replace(self, **sections: Any) -> TrainConfig:
        return dataclasses.replace(self, **sections)


_SECTIONS = {
    "data": DataConfig, "augment": AugmentConfig, "model": ModelConfig, "optim": OptimConfig, "eval": EvalConfig,
    "maskrcnn": MaskRCNNConfig,
}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def config_from_dict(d: dict[str, Any], *, where: str = "config") -> TrainConfig:
    d = dict(d)
    unknown = sorted(set(d) - {"name", "seed", *_SECTIONS})
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(unknown)}")
    if "name" not in d:
        raise ConfigError(f"{where}: missing 'name'")
    model = d.get("model") or {}
    kind = model.get("kind", "unet") if isinstance(model, dict) else "unet"
    if d.get("maskrcnn") and kind != "maskrcnn":
        raise ConfigError(f"{where}: a 'maskrcnn' section needs model.kind: maskrcnn (got {kind!r})")
    sections = {k: _build(cls, d.get(k) or {}, f"{where}: {k}") for k, cls in _SECTIONS.items()}
    try:
        return TrainConfig(name=str(d["name"]), seed=int(d.get("seed", 0)), **sections)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_config(path_or_preset: str | Path) -> TrainConfig:
    """A YAML file path, or the name of a preset shipped in the package (e.g. 'unet')."""
    p = Path(path_or_preset)
    if not p.exists():
        preset = PRESET_DIR / f"{path_or_preset}.yaml"
        if not preset.exists():
            names = ", ".join(sorted(x.stem for x in PRESET_DIR.glob("*.yaml")))
            raise ConfigError(f"{path_or_preset}: no such file and no such preset (presets: {names})")
        p = preset
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML ({exc})") from exc
    return config_from_dict(data or {}, where=str(p))
