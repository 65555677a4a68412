"""The run settings (`RunConfig`): tiles, batches, instance blocks, memory limits, inputs, products."""

from __future__ import annotations

from dataclasses import dataclass

from nseg_infer.engine.backends import DEVICES
from nseg_infer.sinks.outputs import DEFAULT_PRODUCTS, parse_products
from nseg_infer.sources.channels import ChannelChoice
from nseg_infer.sources.imageio import MAX_PIXELS, REGION_THRESHOLD_PX
from nseg_infer.sources.options import InputOptions


@dataclass(frozen=True)
class RunConfig:
    """Runtime settings; None means "from the bundle's metadata"."""

    tile: int | None = None
    overlap: int | None = None      # the halo, in pixels, on each side of a tile core
    batch: int | None = None
    device: str = "auto"
    block: int = 2048               # instance and product block of larger images: bounds peak memory
    margin: int = 128               # block margin: nuclei clumps up to this size are seamless
    large_px: int = 8192 * 8192     # above: labels on disk (memmap) and a tiled BigTIFF
    region_px: int = REGION_THRESHOLD_PX  # above: TIFFs are read window by window
    max_pixels: int = MAX_PIXELS    # above: an input is refused from its header, before decoding
    overview_side: int = 4096       # overlay longest side for large images
    threads: int | None = None
    queue_depth: int = 3
    channel: int | None = None      # the nuclear channel of a multichannel image (0-based)
    channels: tuple[int, ...] | None = None  # or up to three channels onto the model's R, G, B
    pixel_size: float | None = None  # µm per pixel, overriding the file's metadata
    diameter: float | None = None   # typical nucleus diameter (px) in the input: rescale to the model's
    products: tuple[str, ...] = DEFAULT_PRODUCTS
    flips: bool = False             # UNet test-time flips: about 4x slower, a little more accurate

    def __post_init__(self) -> None:
        object.__setattr__(self, "products", parse_products(self.products))
        # "0,2,1" from a command line or a sequence from Python: a validated tuple either way.
        object.__setattr__(self, "channels", self.input_options.choice.channels)
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
        if self.large_px < 1 or self.region_px < 1 or self.overview_side < 64:
            raise ValueError("large_px and region_px must be >= 1 and overview_side >= 64")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")

    @property
    def input_options(self) -> InputOptions:
        return InputOptions(ChannelChoice.parse(self.channel, self.channels), self.pixel_size, self.diameter)
