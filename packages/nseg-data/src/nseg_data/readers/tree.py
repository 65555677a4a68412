"""A read-only view of files in a folder or a zip (zips nested in zips included).

Readers that accept both a folder and an archive address files by relative POSIX path through
this view, so the Kaggle layout is parsed once. Provenance strings use `outer.zip!inner.zip!member`.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from nseg_data.errors import DataError


@dataclass(frozen=True)
class FileTree:
    """Relative path -> file, readable as bytes. `label` names the folder or archive."""

    label: str
    root: Path | None = None  # set for a folder
    archive: zipfile.ZipFile | None = field(default=None, compare=False)
    names: tuple[str, ...] = ()
    dirs: frozenset[str] = frozenset()  # every folder that exists, empty ones included

    def source(self, rel: str) -> str:
        return str(self.root / rel) if self.root is not None else f"{self.label}!{rel}"

    def read(self, rel: str) -> bytes:
        try:
            if self.root is not None:
                return (self.root / rel).read_bytes()
            assert self.archive is not None
            return self.archive.read(rel)
        except (OSError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(self.source(rel), f"cannot read ({exc})") from exc

    def file_stamp(self, rel: str) -> str:
        """Cheap fingerprint of one file for cache keys: size+mtime on disk, CRC+size in a zip."""
        try:
            if self.root is not None:
                st = os.stat(self.root / rel)
                return f"{st.st_size}:{st.st_mtime_ns}"
            assert self.archive is not None
            info = self.archive.getinfo(rel)
            return f"{info.CRC}:{info.file_size}"
        except (OSError, KeyError):
            return "missing"


def folder_tree(root: Path) -> FileTree:
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "folder does not exist")
    names: list[str] = []
    dirs: set[str] = set()
    for dirpath, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        dirs |= {(rel / d).as_posix() for d in subdirs}
        names += [(rel / f).as_posix() for f in files if not f.startswith(".")]
    return FileTree(label=str(root), root=root, names=tuple(sorted(names)), dirs=frozenset(dirs))


def open_zip(data: bytes | Path, *, label: str) -> zipfile.ZipFile:
    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else Path(data)
        return zipfile.ZipFile(src)
    except FileNotFoundError as exc:
        raise DataError(label, "file does not exist") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(label, f"not a readable zip archive ({exc})") from exc


def zip_tree(zf: zipfile.ZipFile, *, label: str) -> FileTree:
    all_names = [n for n in zf.namelist() if not _hidden(n)]
    names = tuple(sorted(n for n in all_names if not n.endswith("/")))
    # Zips need not hold folder entries, so parents of files count as folders too.
    dirs = {n.rstrip("/") for n in all_names if n.endswith("/")}
    dirs |= {str(p) for n in names for p in PurePosixPath(n).parents if str(p) != "."}
    return FileTree(label=label, archive=zf, names=names, dirs=frozenset(dirs))


def nested_zip_tree(parent: FileTree, member: str) -> FileTree:
    """A zip inside a folder or zip, read into memory (never extracted to disk)."""
    label = parent.source(member)
    return zip_tree(open_zip(parent.read(member), label=label), label=label)


def _hidden(name: str) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(name).parts)
