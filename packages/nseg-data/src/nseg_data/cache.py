"""Decoded-sample cache: one compressed .npz per sample, keyed by the source files' fingerprint.

Decoding ~29,000 mask PNGs takes minutes; reading the cache takes seconds. The key covers
names, sizes and mtimes of every source file, so an edited mask invalidates its entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from nseg_data.atomic import atomic_path
from nseg_data.modality import infer_modality
from nseg_data.sample import Modality, Sample

CACHE_VERSION = 1


def fingerprint_dir(sample_dir: Path) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}".encode())
    for dirpath, _dirs, files in sorted(os.walk(sample_dir)):
        for name in sorted(files):
            st = os.stat(os.path.join(dirpath, name))
            h.update(f"{os.path.relpath(os.path.join(dirpath, name), sample_dir)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def save_sample(path: Path, sample: Sample) -> None:
    labels = sample.labels
    arrays = {"image": sample.image}
    if labels is not None:
        arrays["labels"] = labels.astype(np.uint16) if labels.max(initial=0) < 65536 else labels
    header = {"id": sample.id, "modality": str(sample.modality), "source": sample.source, "meta": sample.meta}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def load_sample(path: Path) -> Sample:
    with np.load(path) as z:
        header = json.loads(z["header"].tobytes().decode())
        labels = z["labels"].astype(np.uint32) if "labels" in z.files else None
        image = z["image"]  # each z[...] access decompresses again
        return Sample(
            id=header["id"],
            image=image,
            labels=labels,
            # Recomputed, not trusted from the cache: the classifier may have changed since. A
            # modality its source declares (nseg_data.sources) is kept.
            modality=Modality(header["meta"]["modality"]) if "modality" in header.get("meta", {}) else infer_modality(image),
            source=header["source"],
            meta=header.get("meta", {}),
        )


def cache_path(cache_dir: Path, sample_dir: Path) -> Path:
    return Path(cache_dir) / f"{Path(sample_dir).name}.{fingerprint_dir(sample_dir)}.npz"


def entry_path(cache_dir: Path, sid: str, key: str) -> Path:
    """Cache file of a reader entry; same naming as `cache_path` so kaggle-folder entries share it."""
    return Path(cache_dir) / f"{sid}.{key}.npz"
