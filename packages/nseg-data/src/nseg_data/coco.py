"""COCO instance JSON with RLE masks, one file per split.

Loads with pycocotools and with detectron2's `register_coco_instances(name, {}, json, image_root)`
(train with `INPUT.MASK_FORMAT = "bitmask"`, since masks are RLE). Images are written as RGB PNGs
under `images/` so every consumer sees the canonical HxWx3 uint8 image, whatever the input form.
pycocotools (extra `coco`) encodes the RLE when installed; otherwise our own writer produces
the identical compressed string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from nseg_data.atomic import write_bytes_atomic
from nseg_data.sample import Sample

CATEGORY = {"id": 1, "name": "nucleus", "supercategory": "cell"}


@dataclass(frozen=True)
class CocoExport:
    split: str
    json_path: Path
    image_root: Path
    n_images: int
    n_annotations: int


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE: alternating run lengths of 0s and 1s, column-major, starting with 0s."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return [int(c) for c in counts]


def counts_to_string(counts: list[int]) -> str:
    """pycocotools' rleToString: deltas against the count two back, 5 bits per char, offset 48."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def encode_mask(mask: np.ndarray) -> dict:
    """Compressed COCO RLE {"size": [h, w], "counts": str}."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        h, w = mask.shape
        return {"size": [int(h), int(w)], "counts": counts_to_string(rle_counts(mask))}
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def annotations_for(labels: np.ndarray, image_id: int, first_ann_id: int) -> list[dict]:
    anns = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        crop = labels[sl] == lab
        full = np.zeros(labels.shape, dtype=bool)
        full[sl] = crop
        ys, xs = sl
        anns.append(
            {
                "id": first_ann_id + len(anns),
                "image_id": image_id,
                "category_id": CATEGORY["id"],
                "segmentation": encode_mask(full),
                "area": int(crop.sum()),
                # Tight box of the pixels, [x, y, w, h], as detectron2's XYWH_ABS expects.
                "bbox": [int(xs.start), int(ys.start), int(xs.stop - xs.start), int(ys.stop - ys.start)],
                "iscrowd": 0,
            }
        )
    return anns


def coco_dict(samples: list[Sample], *, split: str = "") -> dict:
    images, anns = [], []
    for image_id, s in enumerate(sorted(samples, key=lambda s: s.id), start=1):
        if s.labels is None:
            raise ValueError(f"{s.source}: sample {s.id} has no labels; COCO export needs labelled data")
        h, w = s.shape
        images.append({"id": image_id, "file_name": f"{s.id}.png", "height": int(h), "width": int(w),
                       "nseg_id": s.id, "modality": str(s.modality)})
        anns += annotations_for(s.labels, image_id, len(anns) + 1)
    return {
        "info": {"description": f"nseg-data COCO export{f' ({split})' if split else ''}", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [CATEGORY],
    }



def write_image(path: Path, image: np.ndarray) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def export_split(samples: list[Sample], out_dir: Path, split: str) -> CocoExport:
    """Write `<out>/<split>.json` and the split's images under `<out>/images/`."""
    out_dir = Path(out_dir)
    image_root = out_dir / "images"
    d = coco_dict(samples, split=split)
    for s in samples:
        write_image(image_root / f"{s.id}.png", s.image)
    json_path = out_dir / f"{split}.json"
    write_bytes_atomic(json_path, json.dumps(d).encode())
    return CocoExport(split, json_path, image_root, len(d["images"]), len(d["annotations"]))
