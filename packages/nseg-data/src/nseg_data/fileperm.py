"""Permissions of atomically written files.

`tempfile.mkstemp` creates files readable by their owner only; renamed into place they would hide
results from the other accounts of a shared acquisition workstation. Published files get the
mode a plain `open(..., "w")` would give: 0o666 minus the process umask.
"""

from __future__ import annotations

import os


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
