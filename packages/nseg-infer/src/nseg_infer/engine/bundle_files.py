"""A bundle's files: the error that names one (`BundleError`), their sha256, and the rule that a
file a bundle names lies inside its folder (`bundle_file`). The bundle folder's reader
(`engine.bundle`) and the bioimage.io package reader (`engine.bioimageio_package`) both use them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from nseg_data.errors import DataError


class BundleError(DataError):
    """A bundle that cannot be used; the message names the offending file."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def bundle_file(bundle_dir: Path, name: Any, key: str) -> Path:
    """The path of a file `metadata.json` names, refused unless it lies inside the bundle folder.

    A bundle comes from elsewhere; a name like `../../.ssh/id_rsa`, `/etc/passwd` or a symlink
    pointing out of the folder would make the runtime read (and hash, or load as a model) a file
    its author never shipped. Only plain relative names inside the folder are accepted."""
    meta_file = bundle_dir / "metadata.json"
    if not isinstance(name, str) or not name.strip():
        raise BundleError(meta_file, f"'{key}' must be a non-empty file name, got {name!r}")
    rel = Path(name)
    if rel.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BundleError(meta_file, f"'{key}' {name!r} is an absolute path; a bundle names its files "
                                     "relative to its folder")
    if ".." in rel.parts or ".." in name.replace("\\", "/").split("/"):
        raise BundleError(meta_file, f"'{key}' {name!r} leaves the bundle folder ('..')")
    path = bundle_dir / rel
    root = bundle_dir.resolve()
    if path.exists() or path.is_symlink():
        real = path.resolve()
        if not real.is_relative_to(root):
            raise BundleError(meta_file, f"'{key}' {name!r} is a link to {real}, outside the bundle folder")
    return path
