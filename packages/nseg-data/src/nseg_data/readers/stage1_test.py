"""`stage1_test` images with the released `stage1_solution.csv` as their labels.

The solution CSV has `ImageId,EncodedPixels,Height,Width,Usage`; Height/Width are checked against
each image so a solution for another image set fails loudly. Without a solution the samples
are unlabelled (labels=None).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from nseg_data.errors import DataError
from nseg_data.readers.entries import Entry, iter_entries
from nseg_data.readers.rle_csv import open_images, parse_table, read_csv_file, table_entries
from nseg_data.sample import Sample

SOLUTION_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width", "Usage")
SOLUTION_NAMES = ("stage1_solution.csv", "stage1_solution.csv.zip")


def find_solution(images: Path) -> Path | None:
    """`stage1_solution.csv` next to or inside the images folder, if there is one."""
    images = Path(images)
    for base in (images.parent, images):
        for name in SOLUTION_NAMES:
            if (base / name).is_file():
                return base / name
    return None


def solution_entries(images_tree, data: bytes | None, *, csv_source: str) -> list[Entry]:
    table = None
    stamp = "none"
    if data is not None:
        table = parse_table(data, source=csv_source, required=SOLUTION_COLUMNS)
        stamp = hashlib.sha1(data).hexdigest()
    return table_entries(images_tree, table, csv_source=csv_source, csv_stamp=stamp, form="stage1_test", check_size=True)


def entries(images: Path, *, solution: Path | None = None) -> list[Entry]:
    images = Path(images)
    if not images.exists():
        raise DataError(images, "stage1_test folder or zip does not exist")
    sol = solution if solution is not None else find_solution(images)
    data = None
    if sol is not None:
        data, _ = read_csv_file(sol)
    return solution_entries(open_images(images), data, csv_source=str(sol))


def iter_stage1_test(images: Path, *, solution: Path | None = None) -> Iterator[Sample | DataError]:
    yield from iter_entries(entries(images, solution=solution))


def is_stage1_test(path: Path) -> bool:
    """A Kaggle-layout folder without any masks folder, with a solution CSV beside or inside it."""
    path = Path(path)
    if not path.is_dir() or find_solution(path) is None:
        return False
    kids = [c for c in path.iterdir() if c.is_dir()]
    return any((c / "images").is_dir() for c in kids) and not any((c / "masks").is_dir() for c in kids)
