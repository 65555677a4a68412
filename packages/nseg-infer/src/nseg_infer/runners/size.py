"""An image's nucleus size, measured by the model itself, for a model trained with small nuclei enlarged.

A bundle with `scale.min_nucleus_diameter_px` (M) was trained with every image whose median
nucleus is smaller than M px enlarged to M (`nseg_data.size.enlarging_factor`). Its runtime does
what Cellpose's size model and its refinement do:

1. a first pass over the image as it is (the whole image up to PROBE_SIDE², so that pass is its
   prediction where it is not enlarged; of a larger image its centre, LARGE_PROBE_SIDE²) finds nuclei,
   and their median equivalent diameter d (`nseg_data.size`, as training measured its labels)
   gives the factor max(1, M / d);
2. where that factor lies beyond the band the training's scale jitter covered (REFINE_BAND), the
   first pass saw nuclei smaller than the model learnt, so a second pass over the window enlarged
   by it measures them again, at nearly the model's own scale.

The image is then segmented exactly as `--diameter d` segments it. With fewer than MIN_NUCLEI
nuclei found there is nothing to measure, and the image is segmented as it is. `--diameter`, or a
pixel size against a bundle that records its own, sets the scale instead, and nothing is measured.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from nseg_data.size import enlarging_factor, equivalent_diameters

from nseg_infer.engine.bundle import Bundle
from nseg_infer.engine.predictor import Prediction, Predictor
from nseg_infer.regions import ArraySource, ImageSource, Window
from nseg_infer.sources.options import InputOptions
from nseg_infer.sources.scale import Rescale, RescaledSource

PROBE_SIDE = 1024       # an image up to this side is measured whole
LARGE_PROBE_SIDE = 512  # model pixels a pass sees of a larger one: its centre holds enough nuclei to measure
MIN_NUCLEI = 5          # fewer say too little about an image's nuclei
REFINE_BAND = 1.5       # the training's jitter (augment.scale) covers nuclei down to about M / 1.5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SizeEstimate:
    diameter_px: float | None   # at the image's own scale; None: too few nuclei to tell
    nuclei: int                 # found by the pass the diameter comes from
    passes: int
    # The first pass's prediction when it covered the whole image as it is: the image's own
    # prediction wherever it is then segmented unresampled, so it is not made twice.
    whole: Prediction | None = None


def needs_estimate(bundle: Bundle, opts: InputOptions, pixel_size_um: tuple[float, float] | None) -> bool:
    """Whether `bundle` wants the image measured: it records a minimum nucleus size and nothing in
    `opts` or the file (a pixel size, where the bundle records its own) sets the scale."""
    sc = bundle.scale
    return (sc.min_nucleus_diameter_px is not None and opts.diameter is None
            and not (pixel_size_um is not None and sc.pixel_size_um is not None))


def centre_window(height: int, width: int, side: int) -> Window:
    """The centred window of at most side x side pixels of a height x width image."""
    h, w = min(height, side), min(width, side)
    y0, x0 = (height - h) // 2, (width - w) // 2
    return Window(y0, y0 + h, x0, x0 + w)


# (median diameter at the image's scale or None, nuclei found, the prediction where it is the
# whole image's as it is): what one pass tells of one view.
Reading = tuple[float | None, int, Prediction | None]


def _measure(predictor: Predictor, views: Sequence[ImageSource], factors: Sequence[float],
             on_read: Callable[[int, Reading], None] | None = None) -> list[Reading]:
    """The reading of each view over its centre resampled by its factor: one `predict_many`, so
    small images share model calls. `on_read(k, reading)` is told each as it is made (from the
    Predictor's merger thread, in the order `predict_many` makes them)."""
    srcs, whole = [], []
    for view, f in zip(views, factors, strict=True):
        side = PROBE_SIDE if max(view.shape) <= PROBE_SIDE else LARGE_PROBE_SIDE
        win = centre_window(*view.shape, max(1, round(side / f)))
        src: ImageSource = ArraySource(view.read(win), view.path, view.info)
        srcs.append(src if f == 1.0 else RescaledSource(src, Rescale(f).model_shape(*win.shape)))
        whole.append(f == 1.0 and win.shape == view.shape)
    readings: dict[int, Reading] = {}

    def read(k: int, pred: Prediction) -> None:
        d = equivalent_diameters(pred.labels)
        readings[k] = (float(np.median(d)) / factors[k] if len(d) >= MIN_NUCLEI else None, len(d),
                       pred if whole[k] else None)
        if on_read is not None:
            on_read(k, readings[k])

    if srcs:
        predictor.predict_many(srcs, on_ready=read)
    return [readings[k] for k in range(len(srcs))]


def estimate_diameters(predictor: Predictor, views: Sequence[ImageSource],
                       on_ready: Callable[[int, SizeEstimate], None] | None = None) -> list[SizeEstimate]:
    """The nucleus diameter of each view (the channels the model sees, at the image's own scale)
    in one or two passes of `predictor`, whose bundle gives the minimum size the model was trained
    at; each pass over all the views at once. `on_ready(k, estimate)` is told each view's estimate
    as soon as it is final: during the first pass (from the Predictor's merger thread) for a view
    that needs no second, so a caller can go on with it while the model measures the others."""
    target = predictor.bundle.scale.min_nucleus_diameter_px

    def refine(d: float | None) -> bool:
        return d is not None and enlarging_factor(d, target) > REFINE_BAND

    def first_read(k: int, r: Reading) -> None:
        if on_ready is not None and not refine(r[0]):
            on_ready(k, SizeEstimate(r[0], r[1], 1, r[2]))

    first = _measure(predictor, views, [1.0] * len(views), first_read)
    out = [SizeEstimate(d, n, 1, whole) for d, n, whole in first]
    again = [k for k, (d, _, _) in enumerate(first) if refine(d)]
    second = _measure(predictor, [views[k] for k in again], [enlarging_factor(first[k][0], target) for k in again])
    for k, (d, n, _) in zip(again, second, strict=True):
        out[k] = SizeEstimate(first[k][0], first[k][1], 2) if d is None else SizeEstimate(d, n, 2)
        if on_ready is not None:
            on_ready(k, out[k])
    return out


def estimate_diameter(predictor: Predictor, view: ImageSource) -> SizeEstimate:
    """`estimate_diameters` of one view."""
    return estimate_diameters(predictor, [view])[0]


def measured_options(opts: InputOptions, est: SizeEstimate, path: object) -> InputOptions:
    """`opts` with the measured nucleus diameter of the image at `path` (unchanged without one)."""
    if est.diameter_px is None:
        log.info("%s: %d nuclei found, too few to measure their size: segmented as it is", path, est.nuclei)
        return opts
    log.info("%s: nucleus diameter measured %.1f px (%d nuclei, %d pass(es))", path, est.diameter_px, est.nuclei,
             est.passes)
    return dataclasses.replace(opts, diameter=round(est.diameter_px, 1))
