"""The record a cluster run keeps in its output folder (`OUT/nseg-cluster.json`): which files, and
which instance blocks of large images, are finished, so a run that is killed and started again
redoes only the rest.

Finished means recorded here *and* its products on disk: a file whose products were deleted, or
whose input changed (size or modification time), is done again. The record is only valid for the
same model and settings (`fingerprint`); a run with other ones starts afresh. Only the client
writes it, always whole, through `nseg_data.atomic`, so a kill leaves the previous version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from nseg_data.atomic import write_text_atomic

from nseg_infer.runners.inputs import FileResult

log = logging.getLogger(__name__)

MANIFEST_NAME = "nseg-cluster.json"
FORMAT = "nseg-cluster-manifest/1"
# RunConfig fields that never change a product: left out of the fingerprint.
_NEUTRAL = ("threads", "queue_depth")


def fingerprint(bundle_sha256: str, config: object, file_config: object, **extra: object) -> str:
    """sha256 of the model and every setting that changes a product: the model settings
    (`RunConfig`) and the file settings (`FileConfig`), both frozen dataclasses."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NEUTRAL}
    text = json.dumps({"model": bundle_sha256, "config": fields, "files": dataclasses.asdict(file_config), **extra},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def input_id(path: Path) -> dict[str, int]:
    """What identifies one version of an input file (cheap: no hashing of huge images)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def result_record(r: FileResult) -> dict:
    return {"outputs": [str(o) for o in r.outputs], "n_nuclei": r.n_nuclei, "seconds": r.seconds,
            "height": r.height, "width": r.width, "backend": r.backend}


def result_from_record(path: Path, rec: dict) -> FileResult:
    return FileResult(path, tuple(Path(o) for o in rec["outputs"]), int(rec["n_nuclei"]), float(rec["seconds"]),
                      None, int(rec["height"]), int(rec["width"]), str(rec["backend"]))


class Manifest:
    """Finished files and blocks of one output folder; `save()` after each batch of updates."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.files: dict[str, dict] = {}
        self.blocks: dict[str, dict] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: unreadable run manifest ({e}); remove it to start afresh") from e
            if data.get("format") != FORMAT:
                raise ValueError(f"{path}: not a {FORMAT} manifest")
            if data.get("fingerprint") == fingerprint:
                self.files, self.blocks = data.get("files", {}), data.get("blocks", {})
            else:
                log.warning("%s: recorded with another model or settings; every file is done again", path)

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps({"format": FORMAT, "fingerprint": self.fingerprint,
                                                 "files": self.files, "blocks": self.blocks}, indent=1))

    # -- files ------------------------------------------------------------------------------------

    def finished(self, path: Path) -> FileResult | None:
        """The recorded result of `path` if it is finished: same input, every product on disk."""
        rec = self.files.get(str(path))
        if rec is None or rec.get("input") != _id_or_none(path):
            return None
        r = result_from_record(path, rec["result"])
        return r if all(o.exists() for o in r.outputs) else None

    def record_file(self, r: FileResult) -> None:
        self.files[str(r.input)] = {"input": input_id(r.input), "result": result_record(r)}
        self.blocks.pop(str(r.input), None)

    # -- instance blocks of large images -----------------------------------------------------------

    def finished_blocks(self, path: Path, plan: str) -> dict[int, tuple[int, int]]:
        """{block index: (nuclei, clumps cut)} recorded for this input version and block plan."""
        rec = self.blocks.get(str(path))
        if rec is None or rec.get("input") != _id_or_none(path) or rec.get("plan") != plan:
            return {}
        return {int(k): (int(v[0]), int(v[1])) for k, v in rec["done"].items()}

    def record_block(self, path: Path, plan: str, index: int, n: int, cut: int) -> None:
        rec = self.blocks.get(str(path))
        ident = input_id(path)
        if rec is None or rec.get("input") != ident or rec.get("plan") != plan:
            rec = self.blocks[str(path)] = {"input": ident, "plan": plan, "done": {}}
        rec["done"][str(index)] = [n, cut]


def _id_or_none(path: Path) -> dict[str, int] | None:
    try:
        return input_id(path)
    except OSError:
        return None
