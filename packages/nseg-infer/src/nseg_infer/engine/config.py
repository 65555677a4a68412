"""The model settings (`RunConfig`): tiles, batches, device, instance blocks.

What the Predictor and its Planner need, and nothing about files: how inputs are read and which
products are written are a runner's settings (`nseg_infer.runners.file_config.FileConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

from nseg_infer.engine.backends import DEVICES


@dataclass(frozen=True)
class RunConfig:
    """The Predictor's settings; None means "from the bundle's metadata"."""

    tile: int | None = None
    overlap: int | None = None      # the halo, in pixels, on each side of a tile core
    batch: int | None = None
    device: str = "auto"
    block: int = 2048               # instance block of larger images: bounds peak memory
    margin: int = 128               # block margin: nuclei clumps up to this size are seamless
    threads: int | None = None
    queue_depth: int = 3
    flips: bool = False             # UNet test-time flips: 2x the time of a run, a little more accurate

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        for name in ("tile", "batch"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.overlap is not None and self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}")
        if self.block < 64 or self.margin < 0 or self.queue_depth < 1:
            raise ValueError("block must be >= 64, margin >= 0 and queue_depth >= 1")
