"""Atomically written files, with the permissions of ordinary ones.

`tempfile.mkstemp` creates files readable by their owner only; renamed into place they would hide
results from the other accounts of a shared acquisition workstation. Published files get the
mode a plain `open(..., "w")` would give: 0o666 minus the process umask.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    try:  # Linux reports it without changing it (os.umask would race with other threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~_read_umask()


def publish_mode(fd: int) -> None:
    """Give the temp file behind `fd` the mode of an ordinarily created file."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, file_mode())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, give it the ordinary mode, then rename it into
    place: readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        publish_mode(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
