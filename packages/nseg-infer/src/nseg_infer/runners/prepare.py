"""From an opened file to what the model sees, and its labels back at the file's own size.

    file (all channels) -> channels the model sees (`sources.channels.model_view`) -> [its nucleus
    size measured, for a bundle that asks: `runners.size`] -> rescaled to the model's training
    scale (`sources.scale.RescaledSource`) -> a bundle's whole-image resize
    (`engine.resize.resized`) -> [the Predictor] -> labels back through each resampling, at the
    input's size (`sources.scale.labels_to_input`)

`model_input` decorates an opened image (`sized_input` measures its nuclei first where needed); `segmented` brings a prediction for it back. The file
runner (`nseg_infer.runners.files`) joins them around the Predictor, for the CLI, the folder
watch, the cluster, the Python API and the napari plugin alike, so all give the same labels for
the same options. This is where a bundle's settings meet a source: the sources know no bundle, the
engine no file. Label canvases come from the caller's canvas factory (the Predictor's `canvas`): a
large image's temp files live until the `with segmented(...)` block ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nseg_infer.engine.bundle import Bundle
from nseg_infer.engine.predictor import Prediction, Predictor
from nseg_infer.engine.resize import resized
from nseg_infer.regions import ImageSource
from nseg_infer.runners.size import SizeEstimate, estimate_diameter, measured_options, needs_estimate
from nseg_infer.sources.channels import model_view
from nseg_infer.sources.options import InputOptions
from nseg_infer.sources.scale import Rescale, RescaledSource, check_diameter, labels_to_input, rescale_for

# A label canvas of a shape (array, or memmap in `work_dir` for a large image), held for a `with`.
CanvasFactory = Callable[..., AbstractContextManager[np.ndarray]]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segmented:
    labels: np.ndarray                  # HxW uint32 at the input's size (array or memmap)
    max_label: int
    scores: np.ndarray | None
    norm: tuple[float, float]
    view: ImageSource                   # the channels the model saw, at the input's size
    channels: ImageSource | None        # every channel of a multichannel input (per-channel means)
    pixel_size_um: tuple[float, float] | None
    rescale: Rescale


def pixel_size(src: ImageSource, override: float | None) -> tuple[float, float] | None:
    return (override, override) if override is not None else src.info.pixel_size_um


@dataclass(frozen=True)
class ModelInput:
    """One opened image as the model is given it: the channels it sees (`view`, at the input's
    size), rescaled to the model's training scale and resized as the bundle asks (`source`: `view`
    itself when neither applies). `back`: the shapes labels at `source`'s size go back through,
    one resampling at a time, ending at `view`'s (empty when `source` is `view`)."""

    view: ImageSource
    source: ImageSource
    channels: ImageSource | None        # every channel of a multichannel input (per-channel means)
    pixel_size_um: tuple[float, float] | None
    rescale: Rescale
    back: tuple[tuple[int, int], ...] = ()
    # The Predictor's prediction for `source` where measuring the image's nuclei made it already
    # (`sized_input`): the image is then not predicted again.
    made: Prediction | None = None

    def to_input(self, labels: np.ndarray, scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels at `source`'s size (and a detector's scores) brought back to the input's size, in
        memory: what `segmented` does with canvases, for callers holding small images."""
        for shape in self.back:
            out = np.zeros(shape, np.uint32)
            _, scores = labels_to_input(labels, out, scores)
            labels = out
        return labels, scores


def check_options(bundle: Bundle, opts: InputOptions) -> None:
    """Refuse, before any file is read, input options `bundle` cannot honour (every file would
    fail the same way): `--diameter` with a model that records no nucleus diameter."""
    check_diameter(opts.diameter, bundle.scale.nucleus_diameter_px, bundle.path / "metadata.json",
                   bundle.scale.min_nucleus_diameter_px)


def _rescale(bundle: Bundle, path: Path, opts: InputOptions, px: tuple[float, float] | None) -> Rescale:
    check_options(bundle, opts)
    return rescale_for(path, model_diameter_px=bundle.scale.nucleus_diameter_px,
                       model_pixel_size_um=bundle.scale.pixel_size_um, diameter=opts.diameter, pixel_size_um=px,
                       model_min_diameter_px=bundle.scale.min_nucleus_diameter_px)


def model_input(bundle: Bundle, raw: ImageSource, opts: InputOptions = InputOptions()) -> ModelInput:
    view = model_view(raw, opts.choice)
    px = pixel_size(raw, opts.pixel_size_um)
    rescale = _rescale(bundle, raw.path, opts, px)
    channels = raw if raw.info.channel_axis == "C" and raw.channels > 1 else None
    source, back = view, []
    if not rescale.identity:
        h, w = raw.shape
        shape = rescale.model_shape(h, w)
        log.info("%s: rescaled %dx%d -> %dx%d for the model (%s)", raw.path, h, w, *shape, rescale.reason)
        source, back = RescaledSource(view, shape), [view.shape]
    resize = bundle.preprocessing.resize
    if resize is not None:  # normalised whole, then resized, as training prepared its images
        back.insert(0, source.shape)
        source = resized(source, resize, bundle.preprocessing.normalization)
    return ModelInput(view, source, channels, px, rescale, tuple(back))


def measured_input(bundle: Bundle, raw: ImageSource, opts: InputOptions, est: SizeEstimate) -> ModelInput:
    """`model_input` of `raw` with its measured nucleus size (`runners.size`), and the measuring
    pass's prediction as `made` where it is the image's own (the image is not resampled)."""
    inp = model_input(bundle, raw, measured_options(opts, est, raw.path))
    return dataclasses.replace(inp, made=est.whole) if est.whole is not None and not inp.back else inp


def sized_input(predictor: Predictor, raw: ImageSource, opts: InputOptions = InputOptions()) -> ModelInput:
    """`model_input`, with the image's nucleus size first measured by `predictor` where its bundle
    asks for it (`runners.size`): what every runner that segments a file alone gives the Predictor
    (a window of small files measures them together: `FileRunner._segment_window`)."""
    if not needs_estimate(predictor.bundle, opts, pixel_size(raw, opts.pixel_size_um)):
        return model_input(predictor.bundle, raw, opts)
    return measured_input(predictor.bundle, raw, opts, estimate_diameter(predictor, model_view(raw, opts.choice)))


def model_shape(bundle: Bundle, shape: tuple[int, int], opts: InputOptions = InputOptions()) -> tuple[int, int] | None:
    """The size of the image the model's tiles are cut from, for an input of `shape` read with
    `opts`, known before the file is opened: rescaled as `model_input` rescales it (`--diameter`,
    `--pixel-size`), then the bundle's `resize`. None when it depends on what only opening the
    file tells (its own pixel size against a bundle that records one, or its nuclei's size for a
    bundle that measures it) or the rescaling is refused (that error is the file's, reported when
    it is segmented)."""
    if opts.diameter is None and opts.pixel_size_um is None and bundle.scale.pixel_size_um is not None:
        return None
    px = None if opts.pixel_size_um is None else (opts.pixel_size_um, opts.pixel_size_um)
    if needs_estimate(bundle, opts, px):
        return None
    try:
        rescale = _rescale(bundle, Path(), opts, px)
    except ValueError:
        return None
    resize = bundle.preprocessing.resize
    if resize is not None:  # the whole (rescaled) image is resized to resize x resize
        return resize, resize
    return shape if rescale.identity else rescale.model_shape(*shape)


@contextlib.contextmanager
def segmented(canvas: CanvasFactory, inp: ModelInput, pred: Prediction, *,
              work_dir: Path | None = None) -> Iterator[Segmented]:
    """`pred`, the prediction for `inp.source`, as a segmentation at the input's size: its labels
    brought back through each resampling into canvases from `canvas(shape, work_dir=...)` (the
    Predictor's `canvas`: on disk for large images, until the block ends), renumbered 1..n."""
    labels, n, scores = pred.labels, pred.max_label, pred.scores
    with contextlib.ExitStack() as stack:
        for shape in inp.back:
            out = stack.enter_context(canvas(shape, work_dir=work_dir))
            n, scores = labels_to_input(labels, out, scores)
            labels = out
        yield Segmented(labels, n, scores, pred.norm, inp.view, inp.channels, inp.pixel_size_um, inp.rescale)
