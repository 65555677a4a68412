"""Label canvases: in memory, or for a large image a memmap on a hidden temp file."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from nseg_data.atomic import WriteFailed


@contextlib.contextmanager
def label_canvas(shape: tuple[int, int], *, large_px: int, work_dir: Path | None = None) -> Iterator[np.ndarray]:
    """A zeroed HxW uint32 label canvas, valid inside the `with` block. Above `large_px` pixels it
    is a memmap on a hidden temp file in `work_dir` (default: the system's temp folder), removed
    when the block ends, on error too: the labels of a 40k x 40k scan would not fit in memory."""
    h, w = shape
    if h * w <= large_px:
        yield np.zeros((h, w), np.uint32)
        return
    try:
        fd, name = tempfile.mkstemp(prefix=".nseg-canvas.", suffix=".tmp", dir=work_dir)
    except OSError as e:
        raise WriteFailed(Path(work_dir or tempfile.gettempdir()) / ".nseg-canvas", e) from e
    try:
        # Reserve the space now: a memmap that hits a full disk later dies of SIGBUS instead
        # of raising. File systems without fallocate (some network shares) skip this.
        os.posix_fallocate(fd, 0, h * w * 4)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            os.close(fd)
            Path(name).unlink(missing_ok=True)
            raise WriteFailed(name, e) from e
    os.close(fd)
    try:
        yield np.memmap(name, dtype=np.uint32, mode="w+", shape=(h, w))
    finally:
        Path(name).unlink(missing_ok=True)
