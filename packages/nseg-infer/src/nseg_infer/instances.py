"""Torch-free post-processing: model outputs to instance labels.

UNet (`postprocessing.kind: unet_watershed`): the model predicts foreground probability and a
per-nucleus normalised distance to the nucleus edge (1 at the centre, 0 at the border). Seeds are
the distance map's cores; a marker-controlled watershed on the inverted distance, restricted to the
foreground, separates touching nuclei. `components`: the seed study's instances, the 4-connected
components of the thresholded foreground (no distance output needed). Training validation runs
these same functions through the runtime's Predictor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential, watershed


@dataclass(frozen=True)
class WatershedParams:
    fg_threshold: float = 0.5
    seed_threshold: float = 0.5
    min_seed_area: int = 3
    min_size: int = 12

    def __post_init__(self) -> None:
        for name in ("fg_threshold", "seed_threshold"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {v}")
        if self.min_seed_area < 1 or self.min_size < 0:
            raise ValueError("min_seed_area must be >= 1 and min_size >= 0")

    @classmethod
    def from_dict(cls, d: Mapping) -> WatershedParams:
        known = {k: d[k] for k in ("fg_threshold", "seed_threshold", "min_seed_area", "min_size") if k in d}
        return cls(**known)

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


def instance_params(postprocessing: Mapping) -> InstanceParams:
    """A UNet bundle's instance step from its `postprocessing` section (no `kind`: the watershed)."""
    kind = postprocessing.get("kind", "unet_watershed")
    if kind == "unet_watershed":
        return WatershedParams.from_dict(postprocessing)
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


def unet_instances(fg: np.ndarray, dist: np.ndarray, params: WatershedParams = WatershedParams()) -> np.ndarray:
    """Foreground probability + normalised distance (both HxW in [0, 1]) -> HxW uint32 labels."""
    if fg.shape != dist.shape or fg.ndim != 2:
        raise ValueError(f"fg {fg.shape} and dist {dist.shape} must be equal 2-D shapes")
    mask = fg > params.fg_threshold
    if not mask.any():
        return np.zeros(fg.shape, dtype=np.uint32)
    seeds, n_seeds = ndi.label((dist > params.seed_threshold) & mask, structure=_CONN8)
    seeds = _remove_small(seeds, params.min_seed_area)
    labels = watershed(-dist, markers=seeds, mask=mask) if n_seeds else np.zeros(fg.shape, dtype=np.int32)
    # Foreground blobs the seeds missed (faint or tiny nuclei) become instances of their own.
    orphans, n_orphans = ndi.label(mask & (labels == 0), structure=_CONN8)
    if n_orphans:
        orphans[orphans > 0] += int(labels.max())
        labels = np.where(orphans > 0, orphans, labels)
    labels = _remove_small(labels, params.min_size)
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.uint32, copy=False)


def component_instances(fg: np.ndarray, params: ComponentsParams = ComponentsParams()) -> np.ndarray:
    """Foreground probability (HxW) -> HxW uint32 labels, 4-connected as in the seed study."""
    labels, _ = ndi.label(fg > params.fg_threshold)
    labels = _remove_small(labels, params.min_size)
    return relabel_sequential(labels)[0].astype(np.uint32, copy=False)


# Mask R-CNN pasting lives in its own module; re-exported so both model kinds post-process from here.
from nseg_infer.maskpaste import nms, paste_masks  # noqa: E402, F401
