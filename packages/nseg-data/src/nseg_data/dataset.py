"""Open a dataset in whichever form it comes, with optional caching of decoded samples."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from nseg_data import cache, sources
from nseg_data.errors import DataError
from nseg_data.readers import kaggle_folder, kaggle_zip, label_folder, rle_csv, stage1_test
from nseg_data.readers.entries import Entry, make_key
from nseg_data.sample import Sample


@dataclass(frozen=True)
class LoadResult:
    samples: list[Sample]
    errors: list[DataError] = field(default_factory=list)
    seconds: float = 0.0
    cached: int = 0
    form: str = ""

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}


def load_kaggle_folder(
    root: Path,
    *,
    cache_dir: Path | None = None,
    ids: list[str] | None = None,
    progress: Callable[[Iterator], Iterator] | None = None,
) -> LoadResult:
    """`open_dataset` of a Kaggle-layout folder (the form is not guessed)."""
    return open_dataset(root, form="kaggle_folder", cache_dir=cache_dir, ids=ids, progress=progress)


def _kaggle_folder_entries(path: Path, opts: dict) -> list[Entry]:
    require = opts.get("require_labels", True)
    out = []
    for sid in kaggle_folder.list_ids(path):
        key = cache.fingerprint_dir(path / sid)
        # Same key as `cache.cache_path` (shared with load_kaggle_folder) only when masks are required,
        # so an unlabelled entry cached leniently is never served to a strict load.
        if not require:
            key = make_key(key, "masks-optional")
        load = partial(kaggle_folder.read_sample, path / sid, require_masks=require)
        out.append(Entry(id=sid, key=key, source=str(path / sid), load=load))
    return out


def _rle_csv_entries(path: Path, opts: dict) -> list[Entry]:
    if opts.get("labels_csv") is not None:  # images at `path`, masks from the given CSV
        return rle_csv.entries(Path(opts["labels_csv"]), images=path)
    return rle_csv.entries(path, images=opts.get("images"))


def _is_solution_csv(path: Path) -> bool:
    return path.is_file() and path.name.lower().startswith("stage1_solution.csv")


def _stage1_test_entries(path: Path, opts: dict) -> list[Entry]:
    if _is_solution_csv(path):
        images = opts.get("images") or next(
            (p for p in (path.with_name("stage1_test"), path.with_name("stage1_test.zip")) if p.exists()),
            path.with_name("stage1_test"),
        )
        return stage1_test.entries(Path(images), solution=path)
    return stage1_test.entries(path, solution=opts.get("solution"))


def _kaggle_zip_entries(path: Path, opts: dict) -> list[Entry]:
    return kaggle_zip.entries(path, part=opts.get("part", "stage1_train"), masks_from=opts.get("masks_from", "png"))


def _label_folder_entries(path: Path, opts: dict) -> list[Entry]:
    return label_folder.entries(path, require_labels=opts.get("require_labels", True))


def _catalogue_entries(path: Path, opts: dict) -> list[Entry]:
    # Each source's own form is detected; the reading options (labels required or not) pass through.
    return sources.catalogue_entries(path, lambda p: list_entries(p, **{**opts, "labels_csv": None})[1])


# Detection order matters: CSVs before zips (`*.csv.zip`), stage1_test before the Kaggle folder.
FORMS: dict[str, tuple[Callable[[Path], bool], Callable[[Path, dict], list[Entry]]]] = {
    "sources": (sources.is_catalogue, _catalogue_entries),
    "rle_csv": (rle_csv.is_rle_csv, _rle_csv_entries),
    "stage1_test": (lambda p: _is_solution_csv(p) or stage1_test.is_stage1_test(p), _stage1_test_entries),
    "kaggle_zip": (kaggle_zip.is_kaggle_zip, _kaggle_zip_entries),
    "kaggle_folder": (kaggle_folder.is_kaggle_folder, _kaggle_folder_entries),
    "label_folder": (label_folder.is_label_folder, _label_folder_entries),
}


def detect_form(path: Path) -> str:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "does not exist")
    for name, (detect, _load) in FORMS.items():
        if detect(path):
            return name
    raise DataError(
        path,
        "not a recognised dataset (expected a sources catalogue (YAML), a Kaggle stage1 folder or zip, a run-length CSV, "
        "stage1_test with stage1_solution.csv, or a folder of name.png + name.labels.tif / name_masks.png)",
    )


def list_entries(path: Path, *, form: str | None = None, **opts) -> tuple[str, list[Entry]]:
    """The dataset's entries without decoding anything."""
    path = Path(path)
    if form is None:
        form = "rle_csv" if opts.get("labels_csv") is not None else detect_form(path)
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}, expected one of {', '.join(FORMS)}")
    return form, FORMS[form][1](path, opts)


def _load_entry(e: Entry, cache_dir: Path | None) -> tuple[Sample, bool]:
    if cache_dir is None or not e.key:
        return e.load(), False
    cpath = cache.entry_path(cache_dir, e.id, e.key)
    if cpath.exists():
        try:
            return cache.load_sample(cpath), True
        except Exception:  # a truncated or foreign cache file is re-decoded, not trusted
            pass
    s = e.load()
    cache.save_sample(cpath, s)
    return s, False


def open_dataset(
    path: Path,
    *,
    cache_dir: Path | None = None,
    form: str | None = None,
    ids: list[str] | None = None,
    progress: Callable[[Iterator], Iterator] | None = None,
    part: str = "stage1_train",
    masks_from: str = "png",
    labels_csv: Path | None = None,
    solution: Path | None = None,
    images: Path | None = None,
    require_labels: bool = True,
) -> LoadResult:
    """Open a dataset in any supported form (see FORMS), decoding through the cache if given.

    part/masks_from: which part of the competition zip and where its masks come from.
    labels_csv: take masks from this run-length CSV, images from `path`.
    solution/images: explicit stage1_solution.csv, or explicit images for a CSV path.
    Errors are collected, never dropped: each names its file.
    """
    t0 = time.perf_counter()
    opts = {"part": part, "masks_from": masks_from, "labels_csv": labels_csv, "solution": solution,
            "images": images, "require_labels": require_labels}
    form, entries = list_entries(path, form=form, **opts)
    if ids is not None:
        have = {e.id for e in entries}
        missing = sorted(set(ids) - have)
        if missing:
            raise DataError(path, f"{len(missing)} requested ids are not in the dataset, e.g. {missing[0]}")
        wanted = set(ids)
        entries = [e for e in entries if e.id in wanted]
    samples: list[Sample] = []
    errors: list[DataError] = []
    n_cached = 0
    it: Iterator = iter(entries)
    if progress is not None:
        it = progress(it)
    for e in it:
        try:
            s, hit = _load_entry(e, cache_dir)
        except DataError as err:
            errors.append(err)
            continue
        samples.append(s)
        n_cached += hit
    return LoadResult(samples=samples, errors=errors, seconds=time.perf_counter() - t0, cached=n_cached, form=form)
