"""`nseg-infer` command line. Thin: heavy modules are imported inside commands so `--help` is instant."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from nseg_infer.runners.file_config import FileConfig

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Torch-free nuclei segmentation: labels, measurements, overlays and GeoJSON.")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s",
                        stream=sys.stderr)


# Shared by `run` and `watch`: how a file becomes the model's input, and what is written.
_CHANNEL = typer.Option(None, "--channel", help="Nuclear channel of a multichannel image (0-based).")
_CHANNELS = typer.Option(None, "--channels", metavar="R,G,B",
                         help="Up to three channels (0-based) onto the model's red, green, blue.")
_PIXEL_SIZE = typer.Option(None, "--pixel-size", metavar="UM", help="Pixel size in µm, overriding the file's metadata.")
_DIAMETER = typer.Option(None, "--diameter", metavar="PX",
                         help="Typical nucleus diameter in pixels: rescale to the model's scale.")
_PRODUCTS = typer.Option("labels,csv,overlay,geojson", "--products",
                         help="Comma-separated, from: labels, csv, overlay, geojson, geojson.gz, rois, zarr "
                              "(NAME.ome.zarr: the labels as OME-Zarr, needs the dask extra).")
_MODEL = typer.Option(None, "--model", "-m", help="Bundle folder, a bioimage.io package made by nseg-export (MODEL.zip "
                      "or its folder), or a packaged bundle: default (UNet) or maskrcnn.")
_DEVICE = typer.Option("auto", help="auto | cpu | cuda | trt | openvino (cpu: always plain ONNX Runtime fp32; auto: the best trusted backend present)")
_FLIPS = typer.Option(False, "--flips", help="UNet test-time flips: the mean of 4 flipped passes (2x the time of a run).")
_MAX_PIXELS = typer.Option(1 << 32, "--max-pixels", metavar="N", min=1,
                           help="Refuse an image whose header claims more pixels than this, before decoding it "
                                "(default 65536 x 65536).")


def file_config(channel: int | None, channels: str | None, pixel_size: float | None, diameter: float | None,
                products: str, max_pixels: int) -> FileConfig:
    """The file settings of `run` and `watch` from their shared options."""
    from nseg_infer.runners.file_config import FileConfig
    from nseg_infer.sources.channels import ChannelChoice
    from nseg_infer.sources.options import InputOptions

    inputs = InputOptions(ChannelChoice.parse(channel, channels), pixel_size, diameter)
    return FileConfig(inputs, max_pixels=max_pixels, products=products)


_FILE_OPTIONS = {"channel": (int | None, _CHANNEL), "channels": (str | None, _CHANNELS),
                 "pixel_size": (float | None, _PIXEL_SIZE), "diameter": (float | None, _DIAMETER),
                 "products": (str, _PRODUCTS), "max_pixels": (int, _MAX_PIXELS)}


def file_options(command: Callable[..., None]) -> Callable[..., None]:
    """Adds the file options `run` and `watch` share (channels, scale, products, the reading limit)
    to `command`, which gets them as `files`: a function making their `FileConfig` (called where the
    command reports bad settings)."""
    sig = inspect.signature(command)
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
              for name, (kind, option) in _FILE_OPTIONS.items()]

    @functools.wraps(command)
    def with_files(*args: object, **kwargs: object) -> None:
        given = {name: kwargs.pop(name) for name in _FILE_OPTIONS}
        command(*args, files=functools.partial(file_config, **given), **kwargs)

    with_files.__signature__ = sig.replace(parameters=[*(p for p in sig.parameters.values() if p.name != "files"),
                                                       *shared])
    # typer reads the annotations too: `files` is not an option.
    with_files.__annotations__ = {k: v for k, v in command.__annotations__.items() if k != "files"}
    return with_files


@app.command()
@file_options
def run(
    inputs: list[str] = typer.Argument(..., help="Image files, folders and glob patterns."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    model: Path | None = _MODEL,
    tile: int | None = typer.Option(None, help="Tile side in pixels (default: from the bundle)."),
    overlap: int | None = typer.Option(None, help="Halo in pixels on each side of a tile (default: bundle)."),
    batch: int | None = typer.Option(None, help="Tiles per model call (default: bundle)."),
    device: str = _DEVICE,
    flips: bool = _FLIPS,
    cluster: str | None = typer.Option(
        None, "--cluster", metavar="local:N|tcp://HOST:PORT",
        help="Run on dask.distributed: N local worker processes, or an existing scheduler (needs the dask extra)."),
    split_px: int | None = typer.Option(
        None, "--split-px", metavar="PX",
        help="With --cluster: images above this many pixels run as one task per instance block "
             "(default 8192*8192)."),
    *,
    files: Callable[[], FileConfig],
) -> None:
    """Segment INPUTS and write NAME.labels.tif, NAME.csv, NAME.overlay.png, NAME.geojson (and with
    --products, NAME.geojson.gz, NAME.rois.zip and NAME.ome.zarr) and summary.csv."""
    from nseg_data.errors import DataError
    from tqdm import tqdm

    from nseg_infer.engine.backends import BackendError
    from nseg_infer.engine.predictor import Predictor, RunConfig
    from nseg_infer.runners.files import FileRunner
    from nseg_infer.runners.files import run as run_inputs
    from nseg_infer.runners.summary import print_results

    try:
        file_settings = files()
        config = RunConfig(tile=tile, overlap=overlap, batch=batch, device=device, flips=flips)
        if "zarr" in file_settings.products:  # refused before any image is segmented, naming the extra
            from nseg_infer.sinks.omezarr import require_zarr

            require_zarr()
        if cluster is not None:  # the workers load the model; nseg_infer.runners.cluster.client does the rest
            from nseg_infer.runners.cluster.client import ClusterOptions
            from nseg_infer.runners.cluster.connect import cli_run

            options = ClusterOptions() if split_px is None else ClusterOptions(split_px=split_px)
            code = cli_run(inputs, out, model, config, file_settings, cluster, options)
        else:
            runner = FileRunner(Predictor(model, config), file_settings)
    except (DataError, BackendError, ValueError, OSError, ImportError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
    if cluster is not None:
        raise typer.Exit(code)
    predictor = runner.predictor
    typer.echo(f"model: {predictor.bundle.path} ({predictor.bundle.kind}), backend: {predictor.backend_name}, "
               f"tile {predictor.tile}, overlap {predictor.halo}, batch {predictor.batch}", err=True)
    mpx = 0.0
    seconds = 0.0
    started = time.perf_counter()
    bar = tqdm(unit="img", dynamic_ncols=True, file=sys.stderr, disable=None)

    def progress(r) -> None:
        nonlocal mpx, seconds
        mpx += r.megapixels
        seconds = time.perf_counter() - started  # wall time: the pipeline overlaps files
        bar.set_postfix_str(f"{mpx / seconds if seconds else 0:.2f} Mpx/s, {r.input.name}: "
                            + (f"{r.n_nuclei} nuclei" if r.ok else "FAILED"))
        bar.update(1)

    summary_error = None
    try:
        results = run_inputs(inputs, out, runner=runner, progress=progress, on_start=lambda n: bar.reset(total=n))
    except OSError as e:  # summary.csv not written; the images' own results come with the error
        if getattr(e, "results", None) is None:
            bar.close()
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(1) from e
        results, summary_error = e.results, e
    finally:
        bar.close()
    ok = print_results(results, out,
                       timing=f", {mpx:.1f} Mpx in {seconds:.1f} s ({mpx / seconds if seconds else 0:.2f} Mpx/s)")
    if summary_error is not None:
        typer.secho(f"error: {summary_error}", fg="red", err=True)
    if not ok or summary_error is not None:
        raise typer.Exit(1)


@app.command()
@file_options
def watch(
    in_dir: Path = typer.Argument(..., help="Folder the microscope writes into."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (also holds the ledger and watch.log)."),
    pattern: str | None = typer.Option(None, help="Glob on file names, e.g. '*.tif' (default: every supported image)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also watch subfolders (mirrored in OUT)."),
    poll: float = typer.Option(2.0, help="Seconds between folder scans (network shares deliver no events)."),
    settle: float = typer.Option(1.5, help="Seconds a file's size and mtime must stay unchanged before it is read."),
    fail_after: float = typer.Option(30.0, help="Seconds a stable file that does not decode waits before it fails."),
    model: Path | None = _MODEL,
    batch: int | None = typer.Option(None, help="Images (small ones) or tiles per model call (default: bundle)."),
    device: str = _DEVICE,
    once: bool = typer.Option(False, "--once", help="Process what is there (once settled), then exit."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Process failed files again."),
    events: bool = typer.Option(True, "--events/--no-events", help="Use filesystem events to wake early."),
    flips: bool = _FLIPS,
    *,
    files: Callable[[], FileConfig],
) -> None:
    """Segment every image that lands in IN_DIR, exactly once, surviving crashes and restarts."""
    from nseg_data.errors import DataError

    from nseg_infer.engine.backends import BackendError
    from nseg_infer.engine.predictor import Predictor, RunConfig
    from nseg_infer.runners.watch.config import WatchConfig, WatchError
    from nseg_infer.runners.watch.watcher import Watcher

    try:
        config = WatchConfig(in_dir, out, pattern=pattern, recursive=recursive, poll=poll, settle=settle,
                             fail_after=fail_after, once=once, retry_failed=retry_failed, events=events)
        run_config = RunConfig(batch=batch, device=device, flips=flips)
        watcher = Watcher(Predictor(model, run_config), config, files())
        code = watcher.run()
    except (DataError, BackendError, WatchError, ValueError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
    raise typer.Exit(code)


@app.command()
def status(
    out_dir: Path = typer.Argument(..., help="A `watch` output folder."),
    failures: int = typer.Option(10, help="How many of the latest failures to list."),
    compact: bool = typer.Option(False, "--compact", help="Shrink the ledger: delete the history of changed "
                                 "files (and with --older-than, old records of inputs no longer there)."),
    older_than: float | None = typer.Option(None, "--older-than", metavar="DAYS", min=0,
                                            help="With --compact: also delete records of inputs finished more "
                                                 "than DAYS ago whose file is gone from the watched folder."),
) -> None:
    """Counts by state, the latest failures with their errors, and throughput over the last hour."""
    import sqlite3

    from nseg_infer.runners.watch.report import compact_ledger, status_report

    try:
        if compact:
            typer.echo(compact_ledger(out_dir, older_than_days=older_than))
        elif older_than is not None:
            raise typer.BadParameter("--older-than goes with --compact")
        typer.echo(status_report(out_dir, failures=failures))
    except (FileNotFoundError, sqlite3.Error) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e


if __name__ == "__main__":
    app()
