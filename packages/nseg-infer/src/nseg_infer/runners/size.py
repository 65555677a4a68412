"""An image's nucleus size, measured by the model itself, for a model trained with small nuclei enlarged.

A bundle with `scale.min_nucleus_diameter_px` (M) was trained with every image whose median
nucleus is smaller than M px enlarged to M (`nseg_data.size.enlarging_factor`). Its runtime does
what Cellpose's size model and its refinement do:

1. a first pass over the image as it is (its centre, at most PROBE_SIDE² pixels) finds nuclei,
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
from dataclasses import dataclass

import numpy as np
from nseg_data.size import enlarging_factor, equivalent_diameters

from nseg_infer.engine.bundle import Bundle
from nseg_infer.engine.predictor import Prediction, Predictor
from nseg_infer.regions import ArraySource, ImageSource, Window
from nseg_infer.sources.options import InputOptions
from nseg_infer.sources.scale import Rescale, RescaledSource

PROBE_SIDE = 1024       # model pixels a pass may see: the centre of a large image is enough to measure
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


def _measure(predictor: Predictor, view: ImageSource, factor: float) -> tuple[float | None, int, Prediction | None]:
    """(median diameter at the image's scale, nuclei found, the prediction if it is the whole
    image's as it is) over the image's centre resampled by `factor`."""
    win = centre_window(*view.shape, max(1, round(PROBE_SIDE / factor)))
    src: ImageSource = ArraySource(view.read(win), view.path, view.info)
    if factor != 1.0:
        src = RescaledSource(src, Rescale(factor).model_shape(*win.shape))
    pred = predictor.predict(src)
    whole = pred if factor == 1.0 and win.shape == view.shape else None
    d = equivalent_diameters(pred.labels)
    if len(d) < MIN_NUCLEI:
        return None, len(d), whole
    return float(np.median(d)) / factor, len(d), whole


def estimate_diameter(predictor: Predictor, view: ImageSource) -> SizeEstimate:
    """The nucleus diameter of `view` (the channels the model sees, at the image's own scale) in
    one or two passes of `predictor`, whose bundle gives the minimum size the model was trained at."""
    target = predictor.bundle.scale.min_nucleus_diameter_px
    d, n, whole = _measure(predictor, view, 1.0)
    if d is None or enlarging_factor(d, target) <= REFINE_BAND:
        return SizeEstimate(d, n, 1, whole)
    d2, n2, _ = _measure(predictor, view, enlarging_factor(d, target))
    return SizeEstimate(d, n, 2) if d2 is None else SizeEstimate(d2, n2, 2)


def sized_options(predictor: Predictor, view: ImageSource, opts: InputOptions) -> tuple[InputOptions, Prediction | None]:
    """`opts` with the nucleus diameter of `view` measured (call where `needs_estimate`), and the
    first pass's prediction where it covered the whole image as it is (`SizeEstimate.whole`)."""
    est = estimate_diameter(predictor, view)
    if est.diameter_px is None:
        log.info("%s: %d nuclei found, too few to measure their size: segmented as it is", view.path, est.nuclei)
        return opts, est.whole
    log.info("%s: nucleus diameter measured %.1f px (%d nuclei, %d pass(es))",
             view.path, est.diameter_px, est.nuclei, est.passes)
    return dataclasses.replace(opts, diameter=round(est.diameter_px, 1)), est.whole
