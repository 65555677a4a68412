"""`nseg-data`: ingest, stats, split, qc, coco, score. Commands stay thin; heavy modules load lazily."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import typer

from nseg_data.atomic import write_text_atomic
from nseg_data.paths import recorded_path

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Read, check, split, export and score nuclei data.")

CACHE = typer.Option(None, "--cache", help="Decode cache folder (compact .npz per sample).")
FORM = typer.Option(None, "--form", help="Force the input form: kaggle_folder, kaggle_zip, rle_csv, stage1_test, label_folder.")
PART = typer.Option("stage1_train", "--part", help="Part of the competition zip: stage1_train or stage1_test.")
MASKS_FROM = typer.Option("png", "--masks-from", help="Competition zip masks: png (mask files) or csv (run lengths).")
LABELS_CSV = typer.Option(None, "--labels-csv", help="Take masks from this run-length CSV (ImageId,EncodedPixels).")
SOLUTION = typer.Option(None, "--solution", help="stage1_solution.csv for a stage1_test folder or zip.")
UNLABELLED = typer.Option(False, "--allow-unlabelled", help="Accept images without masks/labels (labels=None).")
SPLITS = typer.Option(Path("splits.json"), "--splits", help="Splits JSON file (written by `nseg-data split`).")


@contextmanager
def _errors_exit():
    from nseg_data.errors import DataError

    try:
        yield
    except DataError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err


def _progress(desc: str):
    from tqdm import tqdm

    return lambda it: tqdm(it, desc=desc, unit="img", disable=None, file=sys.stderr)


def _load(path: Path, cache: Path | None, form: str | None, part: str, masks_from: str,
          labels_csv: Path | None, solution: Path | None = None, *, require_labels: bool = True, strict: bool = True):
    """Open the dataset; with strict, any bad file stops the command after all are listed."""
    from nseg_data.dataset import open_dataset

    res = open_dataset(path, cache_dir=cache, form=form, part=part, masks_from=masks_from, labels_csv=labels_csv,
                       solution=solution, require_labels=require_labels, progress=_progress("load"))
    for err in res.errors:
        typer.echo(f"error: {err}", err=True)
    if res.errors and strict:
        typer.echo(f"{len(res.errors)} bad input file(s); nothing was skipped silently, fix them first.", err=True)
        raise typer.Exit(1)
    return res


@app.command()
def ingest(
    path: Path = typer.Argument(..., help="Dataset: folder, competition zip, CSV, ..."),
    cache: Path = typer.Option(..., "--cache", help="Decode cache folder to fill."),
    form: str | None = FORM, part: str = PART, masks_from: str = MASKS_FROM,
    labels_csv: Path | None = LABELS_CSV, solution: Path | None = SOLUTION,
    json_out: Path | None = typer.Option(None, "--json", help="Write the timings here."),
    allow_unlabelled: bool = UNLABELLED,
) -> None:
    """Decode every sample into the cache, then load again from it; report both times."""
    with _errors_exit():
        opts = {"require_labels": not allow_unlabelled, "strict": False}
        first = _load(path, cache, form, part, masks_from, labels_csv, solution, **opts)
        second = _load(path, cache, form, part, masks_from, labels_csv, solution, **opts)
    n = len(first.samples)
    kind = "cold" if first.cached == 0 else f"partly cached ({first.cached}/{n} already in cache)"
    typer.echo(f"form: {first.form}  samples: {n}  errors: {len(first.errors)}")
    typer.echo(f"first load ({kind}): {first.seconds:.2f} s")
    typer.echo(f"cached load: {second.seconds:.2f} s ({second.cached}/{len(second.samples)} from cache)")
    if json_out:
        write_text_atomic(json_out, json.dumps({"form": first.form, "samples": n, "errors": len(first.errors),
                                                "first_seconds": first.seconds, "first_cached": first.cached,
                                                "cached_seconds": second.seconds, "cache": str(cache)}, indent=1) + "\n")
    if first.errors:
        raise typer.Exit(1)


@app.command()
def stats(
    path: Path = typer.Argument(...), cache: Path | None = CACHE, form: str | None = FORM, part: str = PART,
    masks_from: str = MASKS_FROM, labels_csv: Path | None = LABELS_CSV,
    json_out: Path | None = typer.Option(None, "--json"), allow_unlabelled: bool = UNLABELLED,
) -> None:
    """Images, nuclei, sizes and nucleus areas per modality."""
    import numpy as np

    with _errors_exit():
        res = _load(path, cache, form, part, masks_from, labels_csv, require_labels=not allow_unlabelled, strict=False)
    groups: dict[str, list] = {}
    for s in res.samples:
        groups.setdefault(str(s.modality), []).append(s)
    out = {}
    for mod, ss in [*sorted(groups.items()), ("all", res.samples)]:
        counts = [s.n_nuclei for s in ss if s.labels is not None]
        areas = np.concatenate([np.bincount(s.labels.ravel())[1:] for s in ss if s.labels is not None] or [np.zeros(0)])
        areas = areas[areas > 0]
        sizes = sorted({f"{s.shape[1]}x{s.shape[0]}" for s in ss})
        out[mod] = {"images": len(ss), "nuclei": int(sum(counts)),
                    "nuclei_per_image_mean": float(np.mean(counts)) if counts else 0.0,
                    "nuclei_per_image_max": int(max(counts)) if counts else 0,
                    "area_median": float(np.median(areas)) if areas.size else 0.0,
                    "sizes": sizes}
    typer.echo(f"{'modality':<14}{'images':>7}{'nuclei':>8}{'per img':>9}{'max':>6}{'area med':>10}  sizes")
    for mod, r in out.items():
        typer.echo(f"{mod:<14}{r['images']:>7}{r['nuclei']:>8}{r['nuclei_per_image_mean']:>9.1f}"
                   f"{r['nuclei_per_image_max']:>6}{r['area_median']:>10.1f}  {', '.join(r['sizes'][:4])}"
                   + (" ..." if len(r["sizes"]) > 4 else ""))
    if res.errors:
        typer.echo(f"{len(res.errors)} sample(s) could not be read (listed above)")
    if json_out:
        write_text_atomic(json_out, json.dumps({"form": res.form, "modalities": out, "errors": [str(e) for e in res.errors]}, indent=1) + "\n")


@app.command()
def split(
    path: Path = typer.Argument(...),
    out: Path = typer.Option(Path("splits.json"), "--out", help="Splits JSON to write."),
    seed: int = typer.Option(2018, "--seed"),
    locked: float = typer.Option(0.10, "--locked", help="Fraction locked away as the test set."),
    val: float = typer.Option(0.30, "--val", help="Fraction of the rest used for validation."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing, different splits file."),
    cache: Path | None = CACHE, form: str | None = FORM, part: str = PART, masks_from: str = MASKS_FROM,
    labels_csv: Path | None = LABELS_CSV, allow_unlabelled: bool = UNLABELLED,
    keep: Path | None = typer.Option(None, "--keep", help="An existing splits JSON whose images keep their split "
                                     "(e.g. DSB's locked set when other sources join it)."),
) -> None:
    """Stratified, seeded locked/val/train split, written to JSON; prints the per-split modality table.

    For a sources catalogue, images are split by group (slide or patient) within each source."""
    from nseg_data.sources import group_of, source_of
    from nseg_data.split import load_splits, make_group_splits, make_splits, save_splits

    with _errors_exit():
        res = _load(path, cache, form, part, masks_from, labels_csv, require_labels=not allow_unlabelled)
        if any(source_of(s) for s in res.samples) or keep is not None:
            items = {s.id: (source_of(s), group_of(s), str(s.modality)) for s in res.samples}
            splits = make_group_splits(items, seed=seed, locked_fraction=locked, val_fraction=val,
                                       keep=load_splits(keep) if keep is not None else None)
        else:
            splits = make_splits({s.id: str(s.modality) for s in res.samples}, seed=seed, locked_fraction=locked,
                                 val_fraction=val)
        if out.exists():
            old = load_splits(out)
            if old.sha256() != splits.sha256() and not force:
                typer.echo(f"error: {out} exists with other splits (sha256 {old.sha256()[:12]}); the locked set "
                           "must not move. Use --force to replace it.", err=True)
                raise typer.Exit(1)
        save_splits(splits, out)
    typer.echo(splits.format_table())
    typer.echo(f"wrote {out} (sha256 {splits.sha256()[:12]})")


@app.command()
def qc(
    path: Path = typer.Argument(...),
    out: Path = typer.Option(..., "--out", help="Folder for qc.json and qc_gallery.png."),
    min_area: int = typer.Option(10, "--min-area"), min_contrast: float = typer.Option(4.0, "--min-contrast"),
    gallery: int = typer.Option(12, "--gallery", help="How many worst samples to show."),
    fix: list[str] = typer.Option([], "--fix", help="fill-holes, split-components, drop-tiny (repeatable, in order)."),
    fixed_out: Path | None = typer.Option(None, "--fixed-out", help="Write fixed samples here as name.png + name.labels.tif."),
    cache: Path | None = CACHE, form: str | None = FORM, part: str = PART, masks_from: str = MASKS_FROM,
    labels_csv: Path | None = LABELS_CSV,
) -> None:
    """Check labels: overlaps, empty, multi-piece, holes, tiny, no contrast; optionally write fixed labels."""
    from nseg_data import qc as qcm

    if fix and fixed_out is None:
        raise typer.BadParameter("--fix needs --fixed-out")
    bad = [f for f in fix if f not in qcm.FIXES]
    if bad:
        raise typer.BadParameter(f"unknown fix {bad[0]!r}; choose from {', '.join(qcm.FIXES)}")
    params = qcm.QCParams(min_area=min_area, min_contrast=min_contrast)
    with _errors_exit():
        res = _load(path, cache, form, part, masks_from, labels_csv)
    report = qcm.check_samples(res.samples, params)
    qcm.write_report(out / "qc.json", report)
    shown = qcm.write_gallery(out / "qc_gallery.png", report, res.by_id(), n=gallery)
    counts = report.counts()
    typer.echo(f"{'problem':<14}{'masks':>8}")
    for k, v in counts.items():
        typer.echo(f"{k:<14}{v:>8}")
    typer.echo(f"samples with issues: {sum(1 for s in report.samples if s.issues)}/{len(report.samples)}")
    typer.echo(f"wrote {out / 'qc.json'} and {out / 'qc_gallery.png'} ({shown} worst cases)")
    if fix:
        from nseg_data.labelio import write_label_sample

        assert fixed_out is not None
        for s in res.samples:
            write_label_sample(fixed_out, qcm.apply_fixes(s, fix, params))
        after = qcm.check_samples([qcm.apply_fixes(s, fix, params) for s in res.samples], params).counts()
        typer.echo(f"applied {', '.join(fix)} -> {fixed_out}; problems after: "
                   + ", ".join(f"{k} {v}" for k, v in after.items()))


@app.command()
def coco(
    path: Path = typer.Argument(...),
    out: Path = typer.Option(..., "--out", help="Folder for <split>.json and images/."),
    splits_file: Path = SPLITS,
    split_names: list[str] = typer.Option(["train", "val", "locked"], "--split", help="Splits to export (repeatable)."),
    cache: Path | None = CACHE, form: str | None = FORM, part: str = PART, masks_from: str = MASKS_FROM,
    labels_csv: Path | None = LABELS_CSV,
) -> None:
    """COCO instance JSON (RLE masks) per split, for pycocotools and detectron2."""
    from nseg_data.coco import export_split
    from nseg_data.split import load_splits

    with _errors_exit():
        splits = load_splits(splits_file)
        res = _load(path, cache, form, part, masks_from, labels_csv)
        by_id = res.by_id()
        for name in split_names:
            ids = splits[name]
            absent = [i for i in ids if i not in by_id]
            if absent:
                typer.echo(f"error: {len(absent)} ids of split {name} are not in {path}, e.g. {absent[0]}", err=True)
                raise typer.Exit(1)
            e = export_split([by_id[i] for i in ids], out, name)
            typer.echo(f"{name}: {e.n_images} images, {e.n_annotations} annotations -> {e.json_path}")
    typer.echo(f"image root: {out / 'images'}")


@app.command()
def score(
    pred_dir: Path = typer.Argument(..., help="Folder of <id>.labels.tif predictions."),
    gt: Path = typer.Option(..., "--gt", help="Ground-truth dataset (any supported form)."),
    split_name: str | None = typer.Option(None, "--split", help="Score only this split (locked, val, train, all)."),
    splits_file: Path = SPLITS,
    json_out: Path | None = typer.Option(None, "--json", help="Write overall, per-modality and per-image results."),
    cache: Path | None = CACHE, form: str | None = FORM, part: str = PART, masks_from: str = MASKS_FROM,
    labels_csv: Path | None = LABELS_CSV, solution: Path | None = SOLUTION,
) -> None:
    """DSB score, F1, AJI, PQ and Dice of predictions, overall and per modality."""
    from nseg_data.score import score_samples, write_json
    from nseg_data.split import load_splits

    with _errors_exit():
        res = _load(gt, cache, form, part, masks_from, labels_csv, solution)
        samples = res.samples
        if split_name is not None:
            splits = load_splits(splits_file)
            try:
                wanted = set(splits[split_name])
            except KeyError as exc:
                raise typer.BadParameter(str(exc)) from exc
            by_id = res.by_id()
            absent = sorted(wanted - set(by_id))
            if absent:
                typer.echo(f"error: {len(absent)} ids of split {split_name} are not in {gt}, e.g. {absent[0]}", err=True)
                raise typer.Exit(1)
            samples = [by_id[i] for i in sorted(wanted)]
        report = score_samples(pred_dir, samples)
    typer.echo(report.format_table())
    if json_out:
        write_json(json_out, report, pred_dir=recorded_path(pred_dir), gt=recorded_path(gt), split=split_name,
                   splits_file=recorded_path(splits_file) if split_name else None)
        typer.echo(f"wrote {json_out}")
