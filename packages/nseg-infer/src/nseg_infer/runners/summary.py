"""What `nseg-infer run` prints when it ends, in one process or on a cluster: the count of images
segmented and nuclei found, then each failure (naming its file), and what to do where outputs
could not be written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer

from nseg_infer.runners.inputs import FileResult


def print_results(results: Sequence[FileResult], out: Path, *, counted: str = "", timing: str = "",
                  warnings: Sequence[str] = ()) -> bool:
    """The closing lines of a run (`counted` follows the image count, `timing` the nuclei count);
    True when every image was segmented."""
    done = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    typer.echo(f"{len(done)} of {len(results)} images segmented{counted}, {sum(r.n_nuclei for r in done)} nuclei"
               f"{timing}; results in {out}")
    for w in warnings:
        typer.secho(f"warning: {w}", fg="yellow", err=True)
    if not failed:
        return True
    typer.secho(f"{len(failed)} failed:", fg="red", err=True)
    for r in failed:
        typer.secho(f"  {r.error}", fg="red", err=True)
    unwritten = [r for r in failed if r.output_errno is not None]
    if unwritten:
        typer.secho(f"{len(unwritten)} of them failed because their outputs could not be written (full disk, "
                    f"read-only or missing output folder); nothing partial is left under a product's name: run again once "
                    f"{out} is writable", fg="red", err=True)
    return False
