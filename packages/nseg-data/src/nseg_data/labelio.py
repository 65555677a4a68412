"""Write label images the way nseg does (`name.labels.tif`), so a label folder can be read back."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from nseg_data.atomic import write_bytes_atomic
from nseg_data.sample import Sample


def write_labels(path: Path, labels: np.ndarray) -> None:
    """uint16 when it fits else uint32, zlib-compressed TIFF."""
    import tifffile

    lab = np.asarray(labels)
    lab = lab.astype(np.uint16) if lab.max(initial=0) < 65536 else lab.astype(np.uint32)
    buf = io.BytesIO()
    tifffile.imwrite(buf, lab, compression="zlib")
    write_bytes_atomic(Path(path), buf.getvalue())


def write_label_sample(folder: Path, sample: Sample) -> tuple[Path, Path]:
    """`<folder>/<id>.png` (RGB) + `<folder>/<id>.labels.tif`, the label-folder form."""
    from PIL import Image

    folder = Path(folder)
    img_path, lab_path = folder / f"{sample.id}.png", folder / f"{sample.id}.labels.tif"
    buf = io.BytesIO()
    Image.fromarray(sample.image).save(buf, format="PNG")
    write_bytes_atomic(img_path, buf.getvalue())
    if sample.labels is not None:
        write_labels(lab_path, sample.labels)
    return img_path, lab_path
