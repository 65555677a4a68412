"""Synthetic DSB-style data for the nseg-data tests: small, exact, and quick to decode."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 24, 32
REPO = Path(__file__).resolve().parents[3]
SHARED_TRAIN = (REPO / ".." / "shared" / "data" / "dsb2018" / "stage1_train").resolve()
SAMPLE_TRAIN = REPO / "examples" / "sample" / "stage1_train"


def disk(cy: int, cx: int, r: int, shape=(H, W)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def synthetic(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Dark image with bright disks, and the disks as separate masks (fluorescence look)."""
    rng = np.random.default_rng(seed)
    masks = [disk(6, 6, 4), disk(15, 20, 5), disk(8, 26, 3)]
    img = rng.integers(0, 20, (H, W)).astype(np.uint8)
    for m in masks:
        img[m] = 200
    return np.stack([img, img, img, np.full_like(img, 255)], axis=2), masks


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def mask_png(m: np.ndarray) -> bytes:
    return png_bytes(m.astype(np.uint8) * 255)


def kaggle_files(ids=("img_a", "img_b")) -> dict[str, bytes]:
    """Relative path -> bytes of a Kaggle-layout dataset."""
    files = {}
    for k, sid in enumerate(ids):
        img, masks = synthetic(k)
        files[f"{sid}/images/{sid}.png"] = png_bytes(img)
        for j, m in enumerate(masks):
            files[f"{sid}/masks/m{j}.png"] = mask_png(m)
    return files


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return buf.getvalue()


def rle_csv_text(ids=("img_a", "img_b"), solution: bool = False) -> str:
    from nseg_data import rle

    head = "ImageId,EncodedPixels,Height,Width,Usage" if solution else "ImageId,EncodedPixels"
    lines = [head]
    for k, sid in enumerate(ids):
        _img, masks = synthetic(k)
        for m in masks:
            extra = f",{H},{W},Public" if solution else ""
            lines.append(f"{sid},{rle.encode(m)}{extra}")
    return "\n".join(lines) + "\n"


def expected_labels(seed: int = 0) -> np.ndarray:
    lab = np.zeros((H, W), np.uint32)
    for i, m in enumerate(synthetic(seed)[1], start=1):
        lab[m] = i
    return lab
