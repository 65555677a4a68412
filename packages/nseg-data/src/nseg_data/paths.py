"""How result files (score reports, evaluations, comparisons, parity reports) name the paths
they were made from.

Such files are committed beside the code and read on other machines, so they must not carry
the folders of the machine that made them: a path inside the working directory (the
repository, when the tools run from its root, as documented) is written relative to it, and
any other path by its last component only (a temporary folder's name, a dataset folder's name).
"""

from __future__ import annotations

import os
from pathlib import Path


def recorded_path(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """`path` as a result file records it: relative to `base` (default: the working directory)
    when inside it, else only its name."""
    p = Path(os.path.abspath(path))
    b = Path(os.path.abspath(Path.cwd() if base is None else base))
    if p.is_relative_to(b):
        return p.relative_to(b).as_posix()
    return p.name
