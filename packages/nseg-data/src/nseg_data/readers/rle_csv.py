"""Images from a folder or zip, masks from Kaggle's run-length CSV (`stage1_train_labels.csv`).

The CSV has one row per nucleus: `ImageId,EncodedPixels`. Images may sit in Kaggle layout
(`<id>/images/<id>.png`, masks folders ignored) or flat (`<id>.png`).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np

from nseg_data import rle
from nseg_data.errors import DataError
from nseg_data.imageconv import to_rgb_uint8
from nseg_data.modality import infer_modality
from nseg_data.readers import tree as trees
from nseg_data.readers.common import decode_image_bytes
from nseg_data.readers.entries import Entry, iter_entries, make_key
from nseg_data.readers.kaggle_layout import IMAGE_EXTS, kaggle_index
from nseg_data.readers.stack import stack_masks
from nseg_data.sample import Sample

REQUIRED = ("ImageId", "EncodedPixels")


@dataclass(frozen=True)
class RleRow:
    line: int  # line in the CSV file (header is line 1)
    rle: str
    height: int | None = None
    width: int | None = None
    usage: str | None = None


def parse_table(data: bytes, *, source: str, required: tuple[str, ...] = REQUIRED) -> dict[str, list[RleRow]]:
    """CSV bytes -> ImageId -> rows, in file order. Checks columns and Height/Width values."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(source, f"not UTF-8 text ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    cols = reader.fieldnames or []
    missing = [c for c in required if c not in cols]
    if missing:
        raise DataError(source, f"missing column(s) {', '.join(missing)} (found: {', '.join(cols) or 'none'})")
    table: dict[str, list[RleRow]] = {}
    for line, row in enumerate(reader, start=2):
        sid = (row.get("ImageId") or "").strip()
        if not sid:
            raise DataError(source, f"line {line}: empty ImageId")
        h = w = None
        if "Height" in cols and "Width" in cols:
            try:
                h, w = int(row["Height"]), int(row["Width"])
            except (TypeError, ValueError) as exc:
                raise DataError(source, f"line {line}: bad Height/Width ({exc})") from exc
        table.setdefault(sid, []).append(
            RleRow(line=line, rle=(row.get("EncodedPixels") or "").strip(), height=h, width=w, usage=row.get("Usage"))
        )
    return table


def image_index(tree: trees.FileTree) -> dict[str, str]:
    """id -> relative image path, from Kaggle layout if present, else flat `<id>.<ext>` files."""
    kaggle = kaggle_index(tree)
    if kaggle:
        out = {}
        for sid, item in kaggle.items():
            pref = f"{item.folder}/images/{sid}.png"
            imgs = [f for f in item.images if f.lower().endswith(IMAGE_EXTS)]
            if pref in item.images or imgs:
                out[sid] = pref if pref in item.images else imgs[0]
            else:
                out[sid] = f"{item.folder}/images/{sid}.png"  # reading it reports the missing image
        return out
    flat = {}
    for n in tree.names:
        p = PurePosixPath(n)
        if len(p.parts) == 1 and p.suffix.lower() in IMAGE_EXTS:
            flat[p.stem] = n
    return flat


def rows_to_labels(rows: list[RleRow], shape: tuple[int, int], *, csv_source: str, sid: str) -> tuple[np.ndarray, dict]:
    masks = []
    for r in rows:
        if not r.rle:
            continue  # a row without pixels marks an image with no nuclei
        name = f"{csv_source} line {r.line} (ImageId {sid})"
        masks.append((name, rle.decode(r.rle, shape, source=name)))
    return stack_masks(masks, shape, source=csv_source)


def load_one(
    tree: trees.FileTree, rel: str, sid: str, rows: list[RleRow] | None, *, csv_source: str, check_size: bool
) -> Sample:
    src = tree.source(rel)
    image = to_rgb_uint8(decode_image_bytes(tree.read(rel), source=src), source=src)
    shape = image.shape[:2]
    labels, meta = None, {}
    if rows is not None:
        if not rows:
            raise DataError(csv_source, f"no rows for image {sid} ({src})")
        if check_size:
            r0 = rows[0]
            if (r0.height, r0.width) != shape:
                raise DataError(
                    csv_source,
                    f"line {r0.line}: ImageId {sid} says {r0.width}x{r0.height}, image {src} is {shape[1]}x{shape[0]}",
                )
        labels, meta = rows_to_labels(rows, shape, csv_source=csv_source, sid=sid)
        usage = {r.usage for r in rows if r.usage}
        if usage:
            meta["usage"] = sorted(usage)[0] if len(usage) == 1 else sorted(usage)
    return Sample(
        id=sid,
        image=image,
        labels=labels,
        modality=infer_modality(image),
        source=src,
        meta={**meta, "image_file": src, "mask_source": csv_source if rows is not None else None},
    )


def table_entries(
    tree: trees.FileTree,
    table: dict[str, list[RleRow]] | None,
    *,
    csv_source: str,
    csv_stamp: str,
    form: str,
    check_size: bool = False,
) -> list[Entry]:
    """One entry per image; CSV ids without an image become entries that raise, never vanish."""
    images = image_index(tree)
    entries = []
    base = (form, tree.label, csv_stamp)
    for sid, rel in sorted(images.items()):
        rows = None if table is None else table.get(sid, [])
        load = partial(load_one, tree, rel, sid, rows, csv_source=csv_source, check_size=check_size)
        entries.append(Entry(id=sid, key=make_key(*base, sid, tree.file_stamp(rel)), source=tree.source(rel), load=load))
    for sid in sorted(set(table or ()) - set(images)):
        err = DataError(csv_source, f"ImageId {sid} (line {table[sid][0].line}) has no image in {tree.label}")
        entries.append(Entry(id=sid, key=make_key(*base, sid, "missing"), source=csv_source, load=partial(_raise, err)))
    return entries


def _raise(err: DataError) -> Sample:
    raise err


def read_csv_file(path: Path) -> tuple[bytes, str]:
    """CSV bytes and a cache stamp; `.csv.zip` (as Kaggle ships them) is read in memory."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "CSV file does not exist")
    if path.suffix.lower() == ".zip":
        zt = trees.zip_tree(trees.open_zip(path, label=str(path)), label=str(path))
        csvs = [n for n in zt.names if n.lower().endswith(".csv")]
        if len(csvs) != 1:
            raise DataError(path, f"expected one .csv inside, found {len(csvs)}")
        data = zt.read(csvs[0])
    else:
        data = path.read_bytes()
    return data, hashlib.sha1(data).hexdigest()


def open_images(path: Path) -> trees.FileTree:
    path = Path(path)
    if path.is_file():
        return trees.zip_tree(trees.open_zip(path, label=str(path)), label=str(path))
    return trees.folder_tree(path)


def default_images_for(csv_path: Path) -> Path:
    """`stage1_train_labels.csv` -> sibling `stage1_train/` (or `stage1_train.zip`)."""
    stem = Path(csv_path).name.split(".")[0].removesuffix("_labels")
    folder = Path(csv_path).with_name(stem)
    return folder if folder.exists() or not folder.with_suffix(".zip").exists() else folder.with_suffix(".zip")


def entries(csv_path: Path, *, images: Path | None = None) -> list[Entry]:
    data, stamp = read_csv_file(csv_path)
    table = parse_table(data, source=str(csv_path))
    tree = open_images(images if images is not None else default_images_for(csv_path))
    return table_entries(tree, table, csv_source=str(csv_path), csv_stamp=stamp, form="rle_csv")


def iter_rle_csv(csv_path: Path, *, images: Path | None = None) -> Iterator[Sample | DataError]:
    yield from iter_entries(entries(csv_path, images=images))


def is_rle_csv(path: Path) -> bool:
    path = Path(path)
    if not (path.is_file() and path.name.lower().endswith((".csv", ".csv.zip"))):
        return False
    try:
        head = read_csv_file(path)[0][:4096].decode("utf-8-sig", errors="replace").splitlines()[0]
    except (DataError, IndexError):
        return False
    cols = [c.strip() for c in head.split(",")]
    return all(c in cols for c in REQUIRED) and "Height" not in cols
