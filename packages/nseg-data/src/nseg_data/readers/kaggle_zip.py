"""The competition download as is: an outer zip holding `stage1_train.zip`, `stage1_test.zip`,
`stage1_train_labels.csv.zip`, `stage1_solution.csv.zip`, ... Nested zips are read in memory.

A zip that directly holds the Kaggle layout (someone zipped `stage1_train/`) works too.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path, PurePosixPath

from nseg_data.errors import DataError
from nseg_data.readers import tree as trees
from nseg_data.readers.entries import Entry, iter_entries, make_key
from nseg_data.readers.kaggle_layout import kaggle_index, read_item
from nseg_data.readers.rle_csv import parse_table, table_entries
from nseg_data.readers.stage1_test import solution_entries
from nseg_data.sample import Sample

PARTS = ("stage1_train", "stage1_test", "stage2_test_final")
LABEL_CSV = {"stage1_train": "stage1_train_labels.csv", "stage1_test": "stage1_solution.csv"}


def _member(outer: trees.FileTree, name: str) -> str | None:
    """Find `name` (or `name.zip`) anywhere in the outer zip, by file name."""
    for cand in (name, f"{name}.zip"):
        hits = [n for n in outer.names if PurePosixPath(n).name == cand]
        if hits:
            return hits[0]
    return None


def _read_csv(outer: trees.FileTree, name: str) -> tuple[bytes, str] | None:
    rel = _member(outer, name)
    if rel is None:
        return None
    if not rel.endswith(".zip"):
        return outer.read(rel), outer.source(rel)
    inner = trees.nested_zip_tree(outer, rel)
    csvs = [n for n in inner.names if n.lower().endswith(".csv")]
    if len(csvs) != 1:
        raise DataError(inner.label, f"expected one .csv inside, found {len(csvs)}")
    return inner.read(csvs[0]), inner.source(csvs[0])


def part_tree(outer: trees.FileTree, part: str) -> trees.FileTree:
    rel = _member(outer, f"{part}.zip")
    if rel is not None:
        return trees.nested_zip_tree(outer, rel)
    if kaggle_index(outer):
        return outer
    found = sorted(n for n in outer.names if n.endswith(".zip"))
    raise DataError(outer.label, f"no {part}.zip inside (found: {', '.join(found) or 'no zips'})")


def entries(path: Path, *, part: str = "stage1_train", masks_from: str = "png") -> list[Entry]:
    """Samples of one part. masks_from: 'png' (mask files) or 'csv' (the run-length CSV).

    stage1_test always takes its labels from stage1_solution.csv when the zip holds it.
    """
    path = Path(path)
    if masks_from not in ("png", "csv"):
        raise ValueError(f"masks_from must be 'png' or 'csv', got {masks_from!r}")
    outer = trees.zip_tree(trees.open_zip(path, label=str(path)), label=str(path))
    tree = part_tree(outer, part)
    if part != "stage1_train" or masks_from == "csv":
        csv_name = LABEL_CSV.get(part)
        found = _read_csv(outer, csv_name) if csv_name else None
        if part == "stage1_train" and found is None:
            raise DataError(path, f"masks_from='csv' but no {csv_name}(.zip) inside")
        if part == "stage1_train":
            data, src = found
            table = parse_table(data, source=src)
            return table_entries(tree, table, csv_source=src, csv_stamp=make_key(data), form="kaggle_zip")
        data, src = found if found else (None, str(path))
        return solution_entries(tree, data, csv_source=src)
    out = []
    for sid, item in kaggle_index(tree).items():
        stamps = [tree.file_stamp(n) for n in (*item.images, *item.masks)]
        key = make_key("kaggle_zip", tree.label, sid, *stamps)
        out.append(Entry(id=sid, key=key, source=tree.source(item.folder), load=partial(read_item, tree, item)))
    return out


def iter_kaggle_zip(path: Path, *, part: str = "stage1_train", masks_from: str = "png") -> Iterator[Sample | DataError]:
    yield from iter_entries(entries(path, part=part, masks_from=masks_from))


def is_kaggle_zip(path: Path) -> bool:
    import zipfile

    path = Path(path)
    return path.is_file() and path.suffix.lower() == ".zip" and zipfile.is_zipfile(path)
