"""Checkpoints from elsewhere run no code: loading is weights-only, with a minimal allow-list."""

from __future__ import annotations

import os

import pytest
import torch

from nseg_train import default_checkpoint_path
from nseg_train.checkpoint import FORMAT, SAFE_GLOBALS, UnsafeCheckpointError, load_checkpoint, versions


class _RunsCommand:
    """Unpickling this runs `touch MARKER`: what a hostile checkpoint would do with something worse."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _hostile(tmp_path, *, legacy: bool = False):
    marker = tmp_path / "command-ran"
    path = tmp_path / ("legacy.pt" if legacy else "hostile.pt")
    ckpt = {"format": FORMAT, "kind": "unet", "config": {}, "model": {}, "payload": _RunsCommand(marker)}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path, marker


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
    path, marker = _hostile(tmp_path)
    with pytest.raises(UnsafeCheckpointError) as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    assert str(path) in msg and "refused" in msg and "system" in msg  # names the file and the callable
    assert not marker.exists()
    # The payload is real: a full unpickle runs the command. This is what load_checkpoint prevents.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_hostile_legacy_format_pickle_is_refused(tmp_path):
    path, marker = _hostile(tmp_path, legacy=True)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"junk\.pt: not a readable checkpoint"):
        load_checkpoint(bad)
    plain = tmp_path / "plain.pt"
    torch.save({"format": "something else"}, plain)
    with pytest.raises(ValueError, match=r"plain\.pt: not an nseg checkpoint"):
        load_checkpoint(plain)


@pytest.mark.parametrize("kind", ["unet", "maskrcnn"])
def test_shipped_checkpoints_load_weights_only(kind):
    path = default_checkpoint_path(kind)
    if not path.is_file():
        pytest.skip(f"{path.name} is not shipped in this copy")
    ck = load_checkpoint(path)
    assert ck["format"] == FORMAT and ck["kind"] == kind and ck["model"]


def test_new_checkpoints_hold_plain_data_only(tmp_path):
    # versions() must be plain strings so a new checkpoint needs no allow-list entry at all.
    assert all(type(v) is str for v in versions().values())
    path = tmp_path / "new.pt"
    torch.save({"format": FORMAT, "kind": "unet", "versions": versions(), "model": {"w": torch.ones(2)}}, path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    assert load_checkpoint(path)["versions"] == versions()


def test_allow_list_is_minimal():
    assert (torch.torch_version.TorchVersion,) == SAFE_GLOBALS
