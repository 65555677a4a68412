"""The canonical sample every reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Modality(StrEnum):
    FLUORESCENCE = "fluorescence"
    BRIGHTFIELD = "brightfield"
    HISTOLOGY = "histology"


@dataclass(frozen=True, eq=False)
class Sample:
    """One image with its instance labels.

    image: HxWx3 uint8 RGB. labels: HxW uint32, 0 = background, 1..N = nuclei.
    labels may be None for unlabelled data (for example stage1_test without a solution).
    source: provenance, e.g. the file or archive member the sample came from.
    """

    id: str
    image: np.ndarray
    labels: np.ndarray | None
    modality: Modality
    source: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        img = self.image
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"{self.source}: image must be HxWx3 uint8, got {img.shape} {img.dtype}")
        if self.labels is not None:
            lab = self.labels
            if lab.shape != img.shape[:2]:
                raise ValueError(f"{self.source}: labels {lab.shape} do not match image {img.shape[:2]}")
            if lab.dtype != np.uint32:
                raise ValueError(f"{self.source}: labels must be uint32, got {lab.dtype}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    @property
    def n_nuclei(self) -> int:
        return 0 if self.labels is None else len(np.unique(self.labels)) - int((self.labels == 0).any())
