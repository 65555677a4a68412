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

Folders (a model bundle, an unpacked package) are published the same way by `atomic_dir`: built
in a hidden temp folder beside the target and renamed into place by `publish_dir`, so a folder
under its final name is always complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def _built_dir(target: Path, publish: Callable[[Path, Path], None]) -> Iterator[Path]:
    """A hidden temp folder beside `target` (`.NAME.XXXXXXXX.tmp`) for the block to fill, then
    `publish(tmp, target)`; removed when the block raises. Output failures are `WriteFailed`."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as e:
        raise WriteFailed(target, e) from e
    try:
        yield tmp
        publish(tmp, target)
    except WriteFailed:
        raise
    except OSError as e:  # the block's own writes (a full disk) or the publish
        raise WriteFailed(target, e) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when published


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, *, marker: str | None = None) -> Iterator[Path]:
    """Yield an empty hidden temp folder beside `target` (`.NAME.XXXXXXXX.tmp`); when the block
    succeeds it is published as `target` by `publish_dir`, when it raises it is removed and
    `target` is left as it was. Failures of the output's raise `WriteFailed` naming `target`.

    An existing `target` that is not empty is replaced only if it holds `marker` (the file that
    makes it one of the caller's folders, e.g. a bundle's metadata.json): any other folder is
    refused with `FileExistsError` before the block runs, so a mistyped path never deletes
    someone's files."""
    target = Path(target)
    if target.is_dir() and any(target.iterdir()) and not (marker and (target / marker).is_file()):
        what = f"has no {marker}" if marker else "is not empty"
        raise FileExistsError(f"{target}: exists and {what}, so it is not replaced; choose a new or empty folder")
    with _built_dir(target, publish_dir) as tmp:
        yield tmp


def _publish_first(tmp: Path, target: Path) -> None:
    os.chmod(tmp, dir_mode())
    try:
        os.rename(tmp, target)  # fails on a non-empty folder: another writer was first
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
            raise


@contextlib.contextmanager
def first_dir(target: str | os.PathLike) -> Iterator[Path]:
    """`atomic_dir` for a folder that, once there, never changes (a cache entry several processes
    may build at once): the complete temp folder is renamed into place only if `target` does not
    exist yet, else it is dropped and the first writer's folder kept. Failures of the output's
    raise `WriteFailed` naming `target`."""
    with _built_dir(Path(target), _publish_first) as tmp:
        yield tmp


def dir_mode() -> int:
    return 0o777 & ~_read_umask()


def publish_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make the complete folder `tmp` (beside `target`, on the same file system) visible as
    `target`, replacing the folder there if there is one; raises `WriteFailed` naming `target`.

    A new folder takes one rename. Replacing takes two, as POSIX cannot swap two folders: the
    old one is renamed aside to a hidden `.NAME.XXXXXXXX.old`, the new one renamed in, and the
    old one removed. Under `target` there is therefore always the complete old folder or the
    complete new one, never a partial folder. The one crash window is the instant between the
    two renames: a process killed exactly there leaves nothing under `target` and the old
    folder, complete, under its hidden name beside it (rename it back to restore it). If the
    second rename fails, the old folder is renamed back."""
    tmp, target = Path(tmp), Path(target)
    try:
        os.chmod(tmp, dir_mode())  # mkdtemp makes it 0700; published, it gets a plain mkdir's mode
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder")
        if not target.exists():
            os.rename(tmp, target)
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        try:
            os.rename(target, aside)  # onto the empty placeholder, which reserved a unique name
        except OSError:
            aside.rmdir()
            raise
        try:
            os.rename(tmp, target)
        except OSError:
            os.rename(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except WriteFailed:
        raise
    except OSError as e:
        raise WriteFailed(target, e) from e


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
