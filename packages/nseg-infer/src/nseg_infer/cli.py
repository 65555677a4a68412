"""`nseg-infer` command line. Thin: heavy modules are imported inside commands so `--help` is instant."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Torch-free nuclei segmentation: labels, measurements, overlays and GeoJSON.")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s",
                        stream=sys.stderr)


@app.command()
def run(
    inputs: list[str] = typer.Argument(..., help="Image files, folders and glob patterns."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Bundle folder (default: the bundled model)."),
    tile: int | None = typer.Option(None, help="Tile side in pixels (default: from the bundle)."),
    overlap: int | None = typer.Option(None, help="Halo in pixels on each side of a tile (default: bundle)."),
    batch: int | None = typer.Option(None, help="Tiles per model call (default: bundle)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | trt"),
) -> None:
    """Segment INPUTS and write NAME.labels.tif, NAME.csv, NAME.overlay.png, NAME.geojson and summary.csv."""
    from nseg_data.errors import DataError
    from tqdm import tqdm

    from nseg_infer.backends import BackendError
    from nseg_infer.outputs import write_summary
    from nseg_infer.run import Predictor, RunConfig, expand_inputs

    try:
        config = RunConfig(tile=tile, overlap=overlap, batch=batch, device=device)
        files, missing = expand_inputs(inputs)
        if not files and not missing:
            raise typer.BadParameter("no inputs")
        predictor = Predictor(model, config)
    except (DataError, BackendError, ValueError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"model: {predictor.bundle.path} ({predictor.bundle.kind}), backend: {predictor.backend_name}, "
               f"tile {predictor.tile}, overlap {predictor.halo}, batch {predictor.batch}", err=True)
    mpx = 0.0
    seconds = 0.0
    bar = tqdm(total=len(files), unit="img", dynamic_ncols=True, file=sys.stderr, disable=None)

    def progress(r) -> None:
        nonlocal mpx, seconds
        mpx += r.megapixels
        seconds += r.seconds
        bar.set_postfix_str(f"{mpx / seconds if seconds else 0:.2f} Mpx/s, {r.input.name}: "
                            + (f"{r.n_nuclei} nuclei" if r.ok else "FAILED"))
        bar.update(1)

    try:
        results = missing + predictor.process_many(files, out, progress=progress, summary=False)
    finally:
        bar.close()
    write_summary(out / "summary.csv", [r.summary_row() for r in results])
    failed = [r for r in results if not r.ok]
    done = [r for r in results if r.ok]
    typer.echo(f"{len(done)} of {len(results)} images segmented, {sum(r.n_nuclei for r in done)} nuclei, "
               f"{mpx:.1f} Mpx in {seconds:.1f} s ({mpx / seconds if seconds else 0:.2f} Mpx/s); "
               f"results in {out}")
    if failed:
        typer.secho(f"{len(failed)} failed:", fg="red", err=True)
        for r in failed:
            typer.secho(f"  {r.error}", fg="red", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
