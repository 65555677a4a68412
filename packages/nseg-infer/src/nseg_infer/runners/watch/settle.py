"""Finding input files in a watched folder and deciding when each is complete.

A microscope (or a copy over a network share) writes a file over seconds or minutes; reading it
early gives a truncated image or, worse, a plausible half image. A file is *ready* when its size
and mtime have not changed for the settle interval **and** it decodes (the runtime's own opener;
for TIFFs too large to decode up front, every image segment of the plane must lie inside the file).
A file that is stable but does not decode is given `fail_after` seconds more (a copy that stalls)
before it is handed on anyway, to be recorded as failed with the decoder's error; if it changes
later it is a new version and is tried again.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from nseg_infer.regions import ImageSource
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.inputs import failure_message
from nseg_infer.sinks.names import PRODUCT_SUFFIXES
from nseg_infer.sources.formats import SUPPORTED

Stat = tuple[int, int]  # (size, mtime_ns)


@dataclass(frozen=True)
class Ready:
    path: Path
    size: int
    mtime_ns: int
    shape: tuple[int, int] | None   # None when the file does not decode
    error: str | None               # why it does not decode
    seen_at: float                  # monotonic time its final (size, mtime) was first observed


@dataclass
class _Obs:
    stat: Stat
    since: float
    error: str | None = None


Opener = Callable[[Path], ImageSource]  # a file opened under its reading limits: `FileConfig.open`


def check_decodes(path: Path, open_file: Opener) -> tuple[tuple[int, int] | None, str | None]:
    """(height, width) if the image is complete, else (None, why), opening it as the runner will
    (`open_file`, `FileConfig.open`)."""
    try:
        with open_file(path) as src:
            src.check_complete()
            return src.shape, None
    except Exception as e:
        return None, failure_message(path, e)


class FolderScanner:
    """Lists candidate inputs and tracks their settling. Not thread-safe: one scanner thread."""

    def __init__(self, in_dir: str | Path, *, pattern: str | None = None, recursive: bool = False,
                 exclude: Iterable[str | Path] = (), settle: float = 1.5, fail_after: float = 30.0,
                 open_file: Opener = FileConfig().open) -> None:
        self.root = Path(in_dir).resolve()
        self.pattern = pattern
        self.recursive = recursive
        self.exclude = {Path(p).resolve() for p in exclude}
        self.settle = settle
        self.fail_after = max(fail_after, settle)
        self.open_file = open_file
        self.settling: dict[Path, _Obs] = {}
        # Versions already handed on (in the ledger); skipped without any I/O beyond the stat.
        self.known: dict[Path, Stat] = {}
        # One Path object per file name, reused by every scan: a folder of thousands of files is
        # listed every pass, and building and comparing fresh Paths made a pass cost ~0.1 ms per
        # file (dict lookups then hit the same object, sorting uses the cached string).
        self._paths: dict[str, Path] = {}

    def matches(self, path: Path) -> bool:
        name = path.name
        # Hidden names are copy tools' temp files (rsync, our own atomic writers) until renamed.
        if name.startswith(".") or name.lower().endswith(PRODUCT_SUFFIXES):
            return False
        if self.pattern is None:
            return path.suffix.lower() in SUPPORTED
        rel = path.relative_to(self.root).as_posix()
        return fnmatch.fnmatch(rel if "/" in self.pattern else name, self.pattern)

    def scan(self) -> dict[Path, Stat]:
        found: dict[Path, Stat] = {}
        stack = [self.root]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(d)
            except OSError:
                continue  # a subfolder removed mid-scan, or a share that dropped: next pass
            with it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            p = Path(e.path)
                            if self.recursive and not e.name.startswith(".") and p.resolve() not in self.exclude:
                                stack.append(p)
                            continue
                        if e.name.startswith(".") or not e.is_file():
                            continue
                        p = self._paths.get(e.path)
                        if p is None:
                            p = Path(e.path)
                            if not self.matches(p):
                                continue
                            self._paths[e.path] = p
                        st = e.stat()
                    except OSError:
                        continue
                    found[p] = (st.st_size, st.st_mtime_ns)
        return found

    def step(self, now: float) -> list[Ready]:
        """One pass: the files that became ready since the last pass."""
        found = self.scan()
        ready: list[Ready] = []
        for p in list(self.settling):
            if p not in found:
                del self.settling[p]
        for p in list(self.known):
            if p not in found:
                del self.known[p]
        if len(self._paths) > len(found):
            self._paths = {str(p): p for p in found}
        for p, st in sorted(found.items(), key=lambda kv: str(kv[0])):
            if self.known.get(p) == st:
                continue
            obs = self.settling.get(p)
            if obs is None or obs.stat != st:
                self.settling[p] = _Obs(st, now)
                continue
            age = now - obs.since
            if age < self.settle:
                continue
            shape, error = check_decodes(p, self.open_file)
            if error is not None and age < self.fail_after:
                obs.error = error
                continue
            del self.settling[p]
            ready.append(Ready(p, st[0], st[1], shape, error, obs.since))
        return ready

    def next_deadline(self, now: float) -> float | None:
        """Seconds until the earliest settling file could become ready (None if none settle)."""
        waits = [(o.since + (self.fail_after if o.error else self.settle)) - now for o in self.settling.values()]
        return max(0.0, min(waits)) if waits else None

    def mark_known(self, path: Path, stat: Stat) -> None:
        self.known[path] = stat
