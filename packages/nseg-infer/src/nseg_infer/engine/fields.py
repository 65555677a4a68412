"""A UNet's blended field per instance block, before the instance step: what `nseg-train tune`
searches the instance parameters on and what parity compares across backends.

`Predictor.probabilities(image)` gives the `Fields` of the image's plan, each block's field
computed exactly as `predict` computes it; `instance_labels(fields, params)` runs the instance step per
block with the margin rule and pastes as `predict` pastes, so with the bundle's parameters it
gives `predict`'s labels at every image size, and with others what `predict` would give with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nseg_infer.engine.blocks import Paster, field_instances
from nseg_infer.engine.instances import InstanceParams
from nseg_infer.engine.plan import Plan


@dataclass(frozen=True)
class Fields:
    """`fields[i]`: the [C, h, w] float32 field over `plan.blocks[i].outer` (C = 2, foreground and
    distance, for the watershed; 1 for connected components)."""

    plan: Plan
    fields: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if len(self.fields) != len(self.plan.blocks):
            raise ValueError(f"{len(self.fields)} fields for {len(self.plan.blocks)} blocks")


def instance_labels(fields: Fields, params: InstanceParams) -> np.ndarray:
    """HxW uint32 labels at the plan's shape: each block's owned nuclei, numbered in block order."""
    plan = fields.plan
    paster = Paster(np.zeros(plan.shape, np.uint32))
    for block, field in zip(plan.blocks, fields.fields, strict=True):
        paster.paste(block, field_instances(field, block, plan.shape, params))
    return paster.canvas
