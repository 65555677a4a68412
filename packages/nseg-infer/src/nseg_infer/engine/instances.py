"""Torch-free post-processing: model outputs to instance labels.

UNet (`postprocessing.kind: unet_watershed`): the model predicts foreground probability and a
per-nucleus normalised distance to the nucleus edge (1 at the centre, 0 at the border). Seeds are
the distance map's cores; a marker-controlled watershed on the inverted distance, restricted to the
foreground, separates touching nuclei. With `seed_h` > 0 the seeds are the distance map's
h-maxima instead (the cores within `seed_h` of their own peak), so an elongated nucleus whose
distance ridge has several bumps keeps one seed. `components`: the seed study's instances, the
4-connected components of the thresholded foreground (no distance output needed). Training
validation runs these same functions through the runtime's Predictor.

A bundle may carry `by_modality`: parameters that override the base ones for images inferred to be
fluorescence, brightfield or histology (`nseg_data.modality.infer_modality`): H&E nuclei are larger
and fainter in the distance map, and a threshold that suits one look over- or under-splits another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed


@dataclass(frozen=True)
class WatershedParams:
    fg_threshold: float = 0.5
    seed_threshold: float = 0.5
    min_seed_area: int = 3
    min_size: int = 12
    seed_h: float = 0.0  # > 0: h-maxima seeds of this height instead of thresholded cores

    def __post_init__(self) -> None:
        for name in ("fg_threshold", "seed_threshold"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {v}")
        if self.min_seed_area < 1 or self.min_size < 0:
            raise ValueError("min_seed_area must be >= 1 and min_size >= 0")
        if not 0.0 <= self.seed_h < 1.0:
            raise ValueError(f"seed_h must be in [0, 1), got {self.seed_h}")

    @classmethod
    def from_dict(cls, d: Mapping) -> WatershedParams:
        return cls(**{k: d[k] for k in WATERSHED_KEYS if k in d})

    def instances(self, fg: np.ndarray, dist: np.ndarray | None) -> np.ndarray:
        if dist is None:
            raise ValueError("the watershed needs a distance output; this model has only a foreground")
        return unet_instances(fg, dist, self)


@dataclass(frozen=True)
class ComponentsParams:
    """Connected components of `fg > fg_threshold`, those under `min_size` pixels dropped."""

    fg_threshold: float = 0.5
    min_size: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fg_threshold < 1.0:
            raise ValueError(f"fg_threshold must be in (0, 1), got {self.fg_threshold}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size}")

    def instances(self, fg: np.ndarray, dist: np.ndarray | None = None) -> np.ndarray:
        return component_instances(fg, self)


InstanceParams = WatershedParams | ComponentsParams
INSTANCE_KINDS = ("unet_watershed", "components")
WATERSHED_KEYS = ("fg_threshold", "seed_threshold", "min_seed_area", "min_size", "seed_h")
MODALITIES = ("fluorescence", "brightfield", "histology")


def check_by_modality(by_modality: Mapping | None) -> dict[str, dict[str, float]]:
    """A validated copy of a `by_modality` section: known modalities, watershed keys, valid values."""
    out: dict[str, dict[str, float]] = {}
    for modality, overrides in (by_modality or {}).items():
        if modality not in MODALITIES:
            raise ValueError(f"by_modality: unknown modality {modality!r} (known: {', '.join(MODALITIES)})")
        unknown = sorted(set(overrides) - set(WATERSHED_KEYS))
        if unknown:
            raise ValueError(f"by_modality.{modality}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(WATERSHED_KEYS)}")
        out[modality] = dict(overrides)
        WatershedParams.from_dict(out[modality])  # values checked here, not at the first image
    return out


def instance_params(postprocessing: Mapping, modality: str | None = None) -> InstanceParams:
    """A UNet bundle's instance step from its `postprocessing` section (no `kind`: the watershed),
    with the `by_modality` overrides for `modality` when the section has them."""
    kind = postprocessing.get("kind", "unet_watershed")
    if kind == "unet_watershed":
        by_modality = check_by_modality(postprocessing.get("by_modality"))
        return WatershedParams.from_dict({**postprocessing, **by_modality.get(modality or "", {})})
    if kind == "components":
        return ComponentsParams(float(postprocessing.get("fg_threshold", 0.5)), int(postprocessing.get("min_size", 0)))
    raise ValueError(f"unknown UNet postprocessing kind {kind!r} (known: {', '.join(INSTANCE_KINDS)})")


_CONN8 = np.ones((3, 3), dtype=bool)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 0 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels = labels.copy()
        labels[small[labels]] = 0
    return labels


def renumber(labels: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """`labels` (non-negative ints) as uint32 ids 1..n in the order of their old ids, as
    skimage's `relabel_sequential` numbers them; `keep` (a bool per old id) drops the others to
    0. A lookup table over the ids: no sort of the pixels."""
    keep = np.bincount(labels.ravel()) > 0 if keep is None else np.array(keep, bool)
    keep[0] = False
    lut = np.cumsum(keep, dtype=np.uint32)
    lut[~keep] = 0
    return lut[labels]


def _seeds(mask: np.ndarray, dist: np.ndarray, params: WatershedParams) -> tuple[np.ndarray, int]:
    if params.seed_h <= 0:
        return ndi.label((dist > params.seed_threshold) & mask, structure=_CONN8)
    # Each h-maximum is the plateau within seed_h of its peak: bumps on one ridge share a seed.
    # seed_threshold still rejects peaks too low to be a nucleus centre.
    plateaus, n = ndi.label(h_maxima(np.where(mask, dist, 0).astype(np.float32), params.seed_h).astype(bool),
                            structure=_CONN8)
    if not n:
        return plateaus, 0
    peaks = np.asarray(ndi.maximum(dist, plateaus, index=np.arange(1, n + 1)))
    keep = np.concatenate([[False], peaks > params.seed_threshold])
    plateaus[~keep[plateaus]] = 0
    return plateaus, int(keep.sum())


def unet_instances(fg: np.ndarray, dist: np.ndarray, params: WatershedParams = WatershedParams()) -> np.ndarray:
    """Foreground probability + normalised distance (both HxW in [0, 1]) -> HxW uint32 labels."""
    if fg.shape != dist.shape or fg.ndim != 2:
        raise ValueError(f"fg {fg.shape} and dist {dist.shape} must be equal 2-D shapes")
    mask = fg > params.fg_threshold
    if not mask.any():
        return np.zeros(fg.shape, dtype=np.uint32)
    seeds, n_seeds = _seeds(mask, dist, params)
    seeds = _remove_small(seeds, params.min_seed_area)
    labels = watershed(-dist, markers=seeds, mask=mask) if n_seeds else np.zeros(fg.shape, dtype=np.int32)
    # Foreground blobs the seeds missed (faint or tiny nuclei) become instances of their own.
    orphans, n_orphans = ndi.label(mask & (labels == 0), structure=_CONN8)
    if n_orphans:
        orphans[orphans > 0] += int(labels.max())
        labels = np.where(orphans > 0, orphans, labels)
    return renumber(_remove_small(labels, params.min_size))


def component_instances(fg: np.ndarray, params: ComponentsParams = ComponentsParams()) -> np.ndarray:
    """Foreground probability (HxW) -> HxW uint32 labels, 4-connected as in the seed study."""
    labels, _ = ndi.label(fg > params.fg_threshold)
    return renumber(_remove_small(labels, params.min_size))


