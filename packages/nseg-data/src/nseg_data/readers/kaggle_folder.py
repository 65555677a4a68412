"""Kaggle's own layout: `<root>/<id>/images/<id>.png` + `<root>/<id>/masks/*.png`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nseg_data.errors import DataError
from nseg_data.imageconv import to_rgb_uint8
from nseg_data.modality import infer_modality
from nseg_data.readers.common import mask_to_bool, read_image_file
from nseg_data.readers.stack import stack_masks
from nseg_data.sample import Sample


def is_kaggle_folder(root: Path) -> bool:
    root = Path(root)
    if not root.is_dir():
        return False
    return any(child.is_dir() and (child / "images").is_dir() for child in root.iterdir())


def list_ids(root: Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_masks(sample_dir: Path, shape: tuple[int, int]) -> list[np.ndarray]:
    masks_dir = sample_dir / "masks"
    if not masks_dir.is_dir():
        raise DataError(masks_dir, "masks folder is missing")
    masks = []
    for f in sorted(masks_dir.glob("*.png")):
        m = mask_to_bool(read_image_file(f), source=str(f))
        if m.shape != shape:
            raise DataError(f, f"mask is {m.shape[1]}x{m.shape[0]}, image is {shape[1]}x{shape[0]}")
        masks.append(m)
    return masks


def read_sample(sample_dir: Path, *, require_masks: bool = True) -> Sample:
    sample_dir = Path(sample_dir)
    sid = sample_dir.name
    img_path = sample_dir / "images" / f"{sid}.png"
    if not img_path.exists():
        candidates = sorted((sample_dir / "images").glob("*")) if (sample_dir / "images").is_dir() else []
        if not candidates:
            raise DataError(sample_dir / "images", "no image found")
        img_path = candidates[0]
    image = to_rgb_uint8(read_image_file(img_path), source=str(img_path))
    shape = image.shape[:2]
    labels = None
    meta: dict = {}
    if (sample_dir / "masks").is_dir() or require_masks:
        masks = read_masks(sample_dir, shape)
        names = [str(f) for f in sorted((sample_dir / "masks").glob("*.png"))]
        # stack_masks also records which masks overlap or are empty, for QC.
        labels, meta = stack_masks(list(zip(names, masks, strict=True)), shape, source=str(sample_dir / "masks"))
    return Sample(
        id=sid,
        image=image,
        labels=labels,
        modality=infer_modality(image),
        source=str(sample_dir),
        meta={**meta, "image_file": str(img_path)},
    )


def iter_kaggle_folder(root: Path, *, require_masks: bool = True) -> Iterator[Sample | DataError]:
    """Yield every sample; a bad sample yields its DataError so one bad file does not stop a batch."""
    for sid in list_ids(root):
        try:
            yield read_sample(Path(root) / sid, require_masks=require_masks)
        except DataError as err:
            yield err
