"""Plain folders of images with instance-label images beside them.

`name.png` + `name.labels.tif` (what nseg itself writes) or Cellpose's `name_masks.png`
(`name_masks.tif`). Label images hold 0 for background and one integer per nucleus.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from nseg_data.errors import DataError
from nseg_data.imageconv import to_rgb_uint8
from nseg_data.modality import infer_modality
from nseg_data.readers.common import read_image_file
from nseg_data.readers.entries import Entry, iter_entries, make_key
from nseg_data.sample import Sample

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABEL_SUFFIXES = (".labels.tif", ".labels.tiff", ".labels.png", "_masks.png", "_masks.tif", "_masks.tiff")
# Files nseg-infer writes next to labels; they are outputs, not images to read.
OUTPUT_SUFFIXES = (".overlay.png",)


def label_stem(name: str) -> str | None:
    low = name.lower()
    for suf in LABEL_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    return None


def read_label_image(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """An instance-label image to HxW uint32, checking it really is one."""
    arr = np.asarray(read_image_file(path))
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(path, f"label image must be 2-D (one channel), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise DataError(path, "label image holds non-integer values")
    elif arr.dtype.kind not in "uib":
        raise DataError(path, f"label image has unsupported type {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise DataError(path, "label image holds negative values")
    if arr.size and arr.max() > np.iinfo(np.uint32).max:
        raise DataError(path, "label values exceed uint32")
    if shape is not None and arr.shape != tuple(shape):
        raise DataError(path, f"labels are {arr.shape[1]}x{arr.shape[0]}, image is {shape[1]}x{shape[0]}")
    return arr.astype(np.uint32)


def pair_files(root: Path) -> tuple[dict[str, tuple[Path, Path | None]], list[DataError]]:
    """name -> (image, label file or None); problems (orphan labels, two images) as errors."""
    images: dict[str, list[Path]] = {}
    labels: dict[str, list[Path]] = {}
    for f in sorted(root.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        stem = label_stem(f.name)
        if stem is not None:
            labels.setdefault(stem, []).append(f)
        elif f.suffix.lower() in IMAGE_EXTS and not f.name.lower().endswith(OUTPUT_SUFFIXES):
            images.setdefault(f.stem, []).append(f)
    pairs: dict[str, tuple[Path, Path | None]] = {}
    errors: list[DataError] = []
    for name in sorted(set(images) | set(labels)):
        imgs, labs = images.get(name, []), labels.get(name, [])
        if not imgs:
            errors.append(DataError(labs[0], f"label image has no matching image (expected e.g. {name}.png)"))
        elif len(imgs) > 1:
            errors.append(DataError(imgs[0], f"several images share the name {name}: {', '.join(p.name for p in imgs)}"))
        elif len(labs) > 1:
            errors.append(DataError(labs[0], f"several label images for {name}: {', '.join(p.name for p in labs)}"))
        else:
            pairs[name] = (imgs[0], labs[0] if labs else None)
    return pairs, errors


def load_pair(name: str, image_path: Path, label_path: Path | None, *, require_labels: bool) -> Sample:
    if label_path is None and require_labels:
        raise DataError(image_path, f"no label image (expected {name}.labels.tif or {name}_masks.png)")
    image = to_rgb_uint8(read_image_file(image_path), source=str(image_path))
    labels = None if label_path is None else read_label_image(label_path, image.shape[:2])
    return Sample(
        id=name,
        image=image,
        labels=labels,
        modality=infer_modality(image),
        source=str(image_path),
        meta={"image_file": str(image_path), "label_file": None if label_path is None else str(label_path)},
    )


def _raise(err: DataError) -> Sample:
    raise err


def _stamp(p: Path | None) -> str:
    if p is None:
        return "none"
    st = p.stat()
    return f"{p.name}:{st.st_size}:{st.st_mtime_ns}"


def entries(root: Path, *, require_labels: bool = True) -> list[Entry]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "folder does not exist")
    pairs, errors = pair_files(root)
    out = []
    for name, (img, lab) in pairs.items():
        key = make_key("label_folder", root, name, _stamp(img), _stamp(lab), require_labels)
        load = partial(load_pair, name, img, lab, require_labels=require_labels)
        out.append(Entry(id=name, key=key, source=str(img), load=load))
    for err in errors:
        out.append(Entry(id=Path(err.path).name, key="", source=err.path, load=partial(_raise, err)))
    return out


def iter_label_folder(root: Path, *, require_labels: bool = True) -> Iterator[Sample | DataError]:
    yield from iter_entries(entries(root, require_labels=require_labels))


def is_label_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and any(label_stem(f.name) is not None for f in path.iterdir() if f.is_file())
