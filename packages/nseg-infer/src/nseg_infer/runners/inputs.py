"""Files in, results out: expanding inputs (files, folders, globs) into image files, the output
name stem of an input, and the per-file result a batch reports."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nseg_data.atomic import WriteFailed

from nseg_infer.sinks.names import PRODUCT_SUFFIXES
from nseg_infer.sources.formats import SUPPORTED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileResult:
    input: Path
    outputs: tuple[Path, ...] = ()
    n_nuclei: int = 0
    seconds: float = 0.0
    error: str | None = None
    height: int = 0
    width: int = 0
    backend: str = ""
    # The OS errno when an output could not be written (full disk, read-only or vanished folder):
    # the input may be fine, and the folder watch retries it once the folder is writable again.
    output_errno: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6

    def summary_row(self) -> dict:
        return {"input": str(self.input), "status": "ok" if self.ok else "error", "n_nuclei": self.n_nuclei,
                "height": self.height, "width": self.width, "megapixels": round(self.megapixels, 3),
                "seconds": round(self.seconds, 3), "backend": self.backend,
                "labels": next((str(o) for o in self.outputs if o.name.endswith(".labels.tif")), ""),
                "error": self.error or ""}


def failure_message(path: Path, e: BaseException) -> str:
    """What a user reads when `path` failed: always names the file, once. The errors of nseg's own
    readers already name it; a failed write names the output not written and the OS's reason after
    the input; anything else gets its exception type, which is often the only clue."""
    if str(path) in str(e):
        return str(e)
    if isinstance(e, WriteFailed):
        return f"{path}: {e}"
    return f"{path}: {type(e).__name__}: {e}"


def failed(p: Path, e: BaseException, seconds: float, h: int, w: int, backend: str) -> FileResult:
    """The result of input `p` failing with `e`, logged once with the message users read
    (`failure_message`): the one rule of the file runner, the folder watch and the cluster. Only a
    `WriteFailed` (an output not written) is an output fault, with the OS's errno."""
    msg = failure_message(p, e)
    log.error("%s", msg)
    log.debug("traceback for %s", p, exc_info=e)
    return FileResult(p, (), 0, seconds, msg, h, w, backend, e.errno if isinstance(e, WriteFailed) else None)


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[FileResult]]:
    """Files, folders (their supported images, sorted) and glob patterns -> (files, failures for
    inputs that name nothing)."""
    files: list[Path] = []
    missing: list[FileResult] = []
    for item in inputs:
        s = str(item)
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SUPPORTED
                           and not q.name.startswith(".") and not q.name.endswith(PRODUCT_SUFFIXES))
            files.extend(found)
            if not found:
                missing.append(FileResult(p, error=f"{p}: folder has no supported images ({', '.join(SUPPORTED)})"))
        elif p.exists():
            files.append(p)
        elif glob.has_magic(s):
            found = sorted(Path(q) for q in glob.glob(s, recursive=True) if Path(q).is_file())
            files.extend(found)
            if not found:
                missing.append(FileResult(p, error=f"{s}: pattern matches no files"))
        else:
            missing.append(FileResult(p, error=f"{p}: file not found"))
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    return unique, missing
