"""The one atomic writer of all four packages: a temp file beside the target, renamed into place.

Readers (a user, a folder watcher, a resumed run) see the old file or the new one, never half of
one. `tempfile.mkstemp` creates files readable by their owner only; renamed into place they would
hide results from the other accounts of a shared acquisition workstation, so a published file gets
the mode a plain `open(..., "w")` would give: 0o666 minus the process umask.

A process killed mid-write leaves its hidden temp file behind; `clean_temp_files` removes those
of a folder (the watch and cluster runs call it when they start), and `exclusive_lock` makes one
process the only writer of an output folder.

A write that fails for a reason of the output's (a full disk, a read-only or vanished folder, a
quota) raises `WriteFailed`, an `OSError` with the OS's errno that names the file not written;
nothing is left under the target's name but the old file, if there was one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Temp names of the runtime's writers: `atomic_path` (".NAME.XXXXXXXX.tmp.EXT") and the large-image
# label canvas (".nseg-canvas.XXXXXXXX.tmp"); mkstemp's random part is 8 of [a-z0-9_].
TEMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]*)?$")


class WriteFailed(OSError):
    """An output that could not be written; `target` is the file, `errno`/`strerror` the OS's
    reason. The message reads "TARGET: not written: REASON (ENAME)"."""

    def __init__(self, target: str | os.PathLike, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.target = Path(target)

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno or 0, "")
        return f"{self.target}: not written: {self.strerror}" + (f" ({name})" if name else "")

    def __reduce__(self):  # survives pickling to and from dask workers with its message
        return (_rebuild_write_failed, (str(self.target), self.errno, self.strerror))


def _rebuild_write_failed(target: str, code: int | None, reason: str | None) -> WriteFailed:
    return WriteFailed(target, OSError(code, reason))


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


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `target`; when the block succeeds it gets the ordinary mode and is
    renamed onto `target`, when it raises it is removed and `target` is left as it was.

    The temp name is hidden and keeps the target's suffix (`.NAME.XXXXXXXX.tmp.EXT`), so writers
    that pick the format by suffix (numpy, tifffile, PIL) work and a folder watcher can recognise
    and clean up leftovers of a killed process."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
        os.close(fd)
    except WriteFailed:
        raise
    except OSError as e:
        raise WriteFailed(target, e) from e
    tmp = Path(name)
    try:
        yield tmp
        _publish(tmp, target)
    except WriteFailed:
        raise
    except OSError as e:  # the writer's own write/close, or the publish: ENOSPC, EROFS, ENOENT, ...
        raise WriteFailed(target, e) from e
    finally:
        with contextlib.suppress(OSError):  # a folder gone or read-only meanwhile: nothing to clean
            tmp.unlink()


def _publish(tmp: Path, target: Path) -> None:
    """The one step that makes an output visible (tests inject write faults here)."""
    # After writing: some writers replace the file rather than write into it.
    os.chmod(tmp, file_mode())
    os.replace(tmp, target)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def clean_temp_files(out_dir: Path) -> list[Path]:
    """Remove the temp files a killed writer left under `out_dir` (hidden folders skipped): never
    visible as outputs, being hidden names, but they would pile up."""
    removed = []
    for root, dirs, files in os.walk(out_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if TEMP_RE.match(name):
                p = Path(root) / name
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


def lock_holder(path: Path) -> str:
    """Who holds the lock file `path`, as its holder wrote it ("host HOST pid PID"), or ""."""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: Exception | type[Exception] | None = None) -> Iterator[None]:
    """Hold an advisory lock on `path` (created if missing) for the `with` block; raise `busy` at
    once if another process holds it. The lock goes with the process, so a killed one frees it.

    The holder writes "host HOST pid PID" into the file, so a refused second run can say who
    holds it (a cluster's output folder is shared between machines); `busy` may be a callable
    taking that text. The text is informative only: the flock is what excludes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = lock_holder(path) or "another process"
            err = busy(holder) if callable(busy) and not isinstance(busy, BaseException) else busy
            raise (err or BlockingIOError(errno.EWOULDBLOCK, f"{path}: locked by {holder}")) from e
        with contextlib.suppress(OSError):  # a full disk must not stop the lock from working
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
