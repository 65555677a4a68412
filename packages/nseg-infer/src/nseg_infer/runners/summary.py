"""What a run reports when it ends, in one process, on a cluster or in a folder watch: `summary.csv`
(one row per input, `FileResult.summary_row`), and the lines `nseg-infer run` prints: the count of
images segmented and nuclei found, then each failure (naming its file), and what to do where
outputs could not be written."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from nseg_data.atomic import atomic_path

from nseg_infer.runners.inputs import FileResult

SUMMARY_COLUMNS = ("input", "status", "n_nuclei", "height", "width", "megapixels", "seconds", "backend",
                   "labels", "error")


def write_summary(path: Path, rows: Sequence[dict]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path



def print_results(results: Sequence[FileResult], out: Path, *, counted: str = "", timing: str = "",
                  warnings: Sequence[str] = ()) -> bool:
    """The closing lines of a run (`counted` follows the image count, `timing` the nuclei count);
    True when every image was segmented."""
    import typer

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
