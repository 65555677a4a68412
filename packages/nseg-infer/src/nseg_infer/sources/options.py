"""How an image is read for the model: which channels, its pixel size, the nuclei's size."""

from __future__ import annotations

from dataclasses import dataclass, field

from nseg_infer.sources.channels import ChannelChoice


@dataclass(frozen=True)
class InputOptions:
    """How to read an image: which channels (`choice`), its pixel size in µm if the file's
    metadata should be overridden, and the typical nucleus diameter in pixels (rescaling)."""

    choice: ChannelChoice = field(default_factory=ChannelChoice)
    pixel_size_um: float | None = None
    diameter: float | None = None

    def __post_init__(self) -> None:
        for name in ("pixel_size_um", "diameter"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name.replace('_um', '')} must be > 0, got {v}")
