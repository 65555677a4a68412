"""Frozen, typed training configs loaded from YAML presets.

Unknown keys are errors: a typo in a preset must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

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
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.crop_size < 32 or self.crop_size % 16:
            raise ConfigError(f"data.crop_size must be a multiple of 16 and >= 32, got {self.crop_size}")
        if self.crops_per_image < 1:
            raise ConfigError("data.crops_per_image must be >= 1")
        if not 0 <= self.modality_balance <= 1:
            raise ConfigError("data.modality_balance must be in [0, 1]")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ConfigError("data percentiles must satisfy 0 <= low < high <= 100")


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    scale: tuple[float, float] = (1.0, 1.0)
    contrast: float = 0.0  # max relative contrast change
    brightness: float = 0.0
    gamma: float = 0.0
    colour: float = 0.0  # per-channel gain/offset jitter (stain variation)
    grayscale_p: float = 0.0
    invert_p: float = 0.0
    noise: float = 0.0
    blur_p: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ConfigError(f"augment.scale must be (low, high) with 0 < low <= high, got {self.scale}")
        for name in ("grayscale_p", "invert_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name} must be a probability")


@dataclass(frozen=True)
class ModelConfig:
    kind: Literal["unet", "maskrcnn"] = "unet"
    targets: Literal["fg", "fg_dist"] = "fg_dist"
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    norm: str = "batch"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.channels) - 1:
            raise ConfigError("model.strides must have one entry fewer than model.channels")

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
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: Literal["constant", "cosine", "onecycle"] = "cosine"
    warmup_epochs: int = 1
    epochs: int = 60
    batch_size: int = 8
    loss: Literal["dice", "bce_dice_dist"] = "bce_dice_dist"
    amp: bool = True

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("optim.lr, optim.epochs and optim.batch_size must be positive")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 2
    instances: Literal["watershed", "components"] = "watershed"
    fg_threshold: float = 0.5
    seed_threshold: float = 0.5
    min_seed_area: int = 3
    min_size: int = 12
    tile: int = 512
    halo: int = 32
    max_val_images: int | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError("eval.every must be >= 1")
        if self.tile % 16 or self.halo < 0 or 2 * self.halo >= self.tile:
            raise ConfigError("eval.tile must be a multiple of 16 and eval.halo in [0, tile/2)")


@dataclass(frozen=True)
class TrainConfig:
    name: str
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.model.targets == "fg" and self.eval.instances == "watershed":
            raise ConfigError("watershed instances need a distance output (model.targets: fg_dist)")
        if self.optim.loss == "bce_dice_dist" and self.model.targets != "fg_dist":
            raise ConfigError("optim.loss bce_dice_dist needs model.targets: fg_dist")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **sections: Any) -> TrainConfig:
        return dataclasses.replace(self, **sections)


_SECTIONS = {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig, "optim": OptimConfig, "eval": EvalConfig}


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
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def config_from_dict(d: dict[str, Any], *, where: str = "config") -> TrainConfig:
    d = dict(d)
    unknown = sorted(set(d) - {"name", "seed", *_SECTIONS})
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(unknown)}")
    if "name" not in d:
        raise ConfigError(f"{where}: missing 'name'")
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
