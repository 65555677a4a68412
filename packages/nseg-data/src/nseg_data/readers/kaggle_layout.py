"""Kaggle's `<id>/images/<id>.png` + `<id>/masks/*.png` layout inside any FileTree (folder or zip)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from nseg_data.errors import DataError
from nseg_data.imageconv import to_rgb_uint8
from nseg_data.modality import infer_modality
from nseg_data.readers.common import decode_image_bytes, mask_to_bool
from nseg_data.readers.stack import stack_masks
from nseg_data.readers.tree import FileTree
from nseg_data.sample import Sample

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class KaggleItem:
    id: str
    folder: str  # relative path of `<id>/`
    images: tuple[str, ...]
    masks: tuple[str, ...]
    has_masks_dir: bool


def kaggle_index(tree: FileTree) -> dict[str, KaggleItem]:
    """id -> its files, for every `<prefix>/<id>/images/...` in the tree."""
    found: dict[str, dict] = {}
    for d in tree.dirs:
        p = PurePosixPath(d)
        if p.name == "images" and len(p.parts) >= 2:
            found[p.parent.as_posix()] = {"images": [], "masks": []}
    for n in tree.names:
        p = PurePosixPath(n)
        folder = p.parent.parent.as_posix()
        if folder in found and p.parent.name in ("images", "masks"):
            found[folder][p.parent.name].append(n)
    index: dict[str, KaggleItem] = {}
    for folder, files in sorted(found.items()):
        sid = PurePosixPath(folder).name
        if sid in index:
            raise DataError(tree.source(folder), f"id {sid} appears twice (also at {index[sid].folder})")
        index[sid] = KaggleItem(
            id=sid,
            folder=folder,
            images=tuple(sorted(files["images"])),
            masks=tuple(sorted(f for f in files["masks"] if f.lower().endswith(IMAGE_EXTS))),
            has_masks_dir=f"{folder}/masks" in tree.dirs,
        )
    return index


def read_image(tree: FileTree, item: KaggleItem) -> tuple[np.ndarray, str]:
    preferred = f"{item.folder}/images/{item.id}.png"
    if preferred in item.images:
        rel = preferred
    else:
        candidates = [f for f in item.images if f.lower().endswith(IMAGE_EXTS)]
        if not candidates:
            raise DataError(tree.source(f"{item.folder}/images"), "no image found")
        rel = candidates[0]
    src = tree.source(rel)
    return to_rgb_uint8(decode_image_bytes(tree.read(rel), source=src), source=src), src


def read_mask_labels(tree: FileTree, item: KaggleItem, shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
    if not item.has_masks_dir:
        raise DataError(tree.source(f"{item.folder}/masks"), "masks folder is missing")
    masks = []
    for rel in item.masks:
        src = tree.source(rel)
        masks.append((src, mask_to_bool(decode_image_bytes(tree.read(rel), source=src), source=src)))
    return stack_masks(masks, shape, source=tree.source(f"{item.folder}/masks"))


def read_item(tree: FileTree, item: KaggleItem, *, require_masks: bool = True) -> Sample:
    image, img_src = read_image(tree, item)
    labels, meta = None, {}
    if item.has_masks_dir or require_masks:
        labels, meta = read_mask_labels(tree, item, image.shape[:2])
    return Sample(
        id=item.id,
        image=image,
        labels=labels,
        modality=infer_modality(image),
        source=tree.source(item.folder),
        meta={**meta, "image_file": img_src},
    )
