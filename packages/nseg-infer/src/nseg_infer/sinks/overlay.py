"""Contour overlays `NAME.overlay.png`: full resolution for ordinary images, a downsampled
overview for large ones.

Drawn band by band on the downsampled view (pixels subsampled before they are scaled for display,
contours max-pooled so none vanishes), so an overview costs memory and time in proportion to its
own size plus one band of labels, not to the whole image at full resolution. Each block draws its
core; a contour on a block seam needs one pixel of labels beyond the core, which the sink reads
from the image's labels, so the overlay does not depend on the block margin.
"""

from __future__ import annotations

import math

import numpy as np

from nseg_infer.regions import ImageSource, Window
from nseg_infer.sinks.base import BlockData, LabelledImage, Sink
from nseg_infer.sinks.png import write_rgb_png

CONTOUR_RGB = (255, 255, 0)


def overview_factor(height: int, width: int, max_side: int) -> int:
    return max(1, math.ceil(max(height, width) / max_side))


def display_rgb(raw: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """uint8 RGB for display, scaled with the whole-image normalisation range so blocks of a
    large image match each other."""
    a = np.asarray(raw)
    if a.ndim == 2:
        a = a[..., None]
    a = a[..., :3] if a.shape[2] >= 3 else np.repeat(a[..., :1], 3, axis=2)
    if a.dtype in (np.uint8, np.uint16):
        # The same float32 arithmetic on every possible value once, then a lookup per pixel.
        return _scale(np.arange(np.iinfo(a.dtype).max + 1, dtype=np.float32), lo, hi)[a]
    return _scale(a.astype(np.float32), lo, hi)


def _scale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def boundaries(framed: np.ndarray) -> np.ndarray:
    """Inner contours of a label window given with a one-pixel frame of context (edge pixels
    repeated at the image's border): labelled pixels with a 4-neighbour of another label, as
    skimage's `find_boundaries(mode="inner")` marks them; the frame is not in the result."""
    c = framed[1:-1, 1:-1]
    other = (c != framed[:-2, 1:-1]) | (c != framed[2:, 1:-1]) | (c != framed[1:-1, :-2]) | (c != framed[1:-1, 2:])
    return other & (c != 0)


def reduce_block(raw: np.ndarray, contours: np.ndarray, factor: int, lo: float, hi: float) -> np.ndarray:
    """The overlay of one window: its raw pixels subsampled by `factor` and scaled for display,
    with every cell holding a contour pixel drawn (max-pool), because plain subsampling makes
    one-pixel contours vanish."""
    small = display_rgb(np.asarray(raw)[::factor, ::factor], lo, hi)
    if factor == 1:
        small[contours] = CONTOUR_RGB
        return small
    h, w = contours.shape
    hh, ww = -(-h // factor), -(-w // factor)
    pad = np.zeros((hh * factor, ww * factor), bool)
    pad[:h, :w] = contours
    small[pad.reshape(hh, factor, ww, factor).any(axis=(1, 3))] = CONTOUR_RGB
    return small


def draw_overlay(ov: np.ndarray, labels: np.ndarray, src: ImageSource, core: Window, factor: int,
                 norm: tuple[float, float], band: int = 512) -> None:
    """Draw `core` into the overlay `ov` (downsampled by `factor`), `band` rows at a time; each
    band's contours need only a one-pixel frame of labels around it, so a contour on a block seam
    is still drawn. `core` starts on a multiple of `factor`, and so does every band."""
    h, w = labels.shape
    band = max(factor, (band // factor) * factor)
    for y0 in range(core.y0, core.y1, band):
        win = Window(y0, min(y0 + band, core.y1), core.x0, core.x1)
        ctx = Window(win.y0 - 1, win.y1 + 1, win.x0 - 1, win.x1 + 1).clip(h, w)
        # Past the image's edge the edge pixels repeat, as find_boundaries' reflection does.
        pads = ((1 - (win.y0 - ctx.y0), 1 - (ctx.y1 - win.y1)), (1 - (win.x0 - ctx.x0), 1 - (ctx.x1 - win.x1)))
        framed = np.pad(np.asarray(labels[ctx.slices]), pads, mode="edge")
        small = reduce_block(src.read(win), boundaries(framed), factor, *norm)
        oy, ox = win.y0 // factor, win.x0 // factor
        ov[oy:oy + small.shape[0], ox:ox + small.shape[1]] = small


class OverlaySink(Sink):
    """The overview is downsampled by `overview_factor(h, w, overview_side)`; blocks must start on
    multiples of it (`outputs.product_blocks`)."""

    product = "overlay"

    def start(self, image: LabelledImage, *, overview_side: int = 4096) -> None:
        h, w = image.shape
        self.image = image
        self.factor = overview_factor(h, w, overview_side)
        self.ov = np.zeros((-(-h // self.factor), -(-w // self.factor), 3), np.uint8)
        self.tmp = self.temp(self.path)

    def write(self, block: BlockData) -> None:
        core = block.block.core
        if core.y0 % self.factor or core.x0 % self.factor:
            raise ValueError(f"block {core} does not start on a multiple of the overview factor {self.factor}")
        draw_overlay(self.ov, self.image.labels, self.image.view, core, self.factor, self.image.norm)

    def finish(self) -> None:
        with open(self.tmp, "wb") as fh:
            write_rgb_png(fh, self.ov)
