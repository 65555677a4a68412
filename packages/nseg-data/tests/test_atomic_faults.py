"""The atomic writer on a full or read-only disk: the OS reason, the file named, nothing half-written
under the target's name. A real size-limited tmpfs where the machine allows (root), injected
faults everywhere."""

from __future__ import annotations

import errno
import os
import pickle
import socket
import subprocess

import pytest

from nseg_data import atomic
from nseg_data.atomic import WriteFailed, atomic_path, exclusive_lock, lock_holder, write_bytes_atomic


def _only(folder):
    return sorted(p.name for p in folder.iterdir())


def test_full_disk_raises_write_failed_and_keeps_the_old_file(small_disk):
    target = small_disk / "labels.tif"
    target.write_bytes(b"old results")
    with pytest.raises(WriteFailed) as e:
        write_bytes_atomic(target, b"\1" * (2 << 20))  # 2 MiB onto a 1 MiB disk
    assert e.value.errno == errno.ENOSPC and e.value.target == target
    assert str(e.value) == f"{target}: not written: No space left on device (ENOSPC)"
    assert _only(small_disk) == ["labels.tif"] and target.read_bytes() == b"old results"


def test_read_only_disk_raises_write_failed(small_disk):
    (small_disk / "a.csv").write_text("old")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        with pytest.raises(WriteFailed) as e:
            write_bytes_atomic(small_disk / "a.csv", b"new")
        assert e.value.errno == errno.EROFS and "a.csv: not written: Read-only file system" in str(e.value)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert _only(small_disk) == ["a.csv"] and (small_disk / "a.csv").read_text() == "old"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_injected_publish_fault_leaves_nothing_behind(tmp_path, monkeypatch, code):
    target = tmp_path / "cells.csv"
    target.write_text("old")

    def fail(tmp, dest):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic, "_publish", fail)
    with pytest.raises(WriteFailed) as e, atomic_path(target) as tmp:
        tmp.write_text("a complete new file, never published")
    assert e.value.errno == code and str(target) in str(e.value) and os.strerror(code) in str(e.value)
    assert _only(tmp_path) == ["cells.csv"] and target.read_text() == "old"


def test_writer_errors_inside_the_block_are_write_failed_too(tmp_path):
    with pytest.raises(WriteFailed, match=r"out\.geojson: not written: No space left on device"), \
            atomic_path(tmp_path / "out.geojson"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert _only(tmp_path) == []


def test_vanished_folder_is_recreated_and_unmakeable_folder_is_write_failed(tmp_path):
    write_bytes_atomic(tmp_path / "gone" / "a.bin", b"x")
    assert (tmp_path / "gone" / "a.bin").read_bytes() == b"x"
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(WriteFailed) as e:
        write_bytes_atomic(tmp_path / "file" / "a.bin", b"x")
    assert str(tmp_path / "file" / "a.bin") in str(e.value)


def test_write_failed_pickles_with_its_message():
    e = WriteFailed("/o/a.csv", OSError(errno.ENOSPC, "No space left on device"))
    back = pickle.loads(pickle.dumps(e))
    assert isinstance(back, WriteFailed) and str(back) == str(e) and back.errno == errno.ENOSPC


def test_lock_names_its_holder(tmp_path):
    lock = tmp_path / ".lock"
    with exclusive_lock(lock, RuntimeError("busy")):
        assert lock_holder(lock) == f"host {socket.gethostname()} pid {os.getpid()}"
        # A second holder (flock is per open file description, so this process can test it).
        with pytest.raises(RuntimeError, match=f"held by host {socket.gethostname()} pid {os.getpid()}"), \
                exclusive_lock(lock, lambda holder: RuntimeError(f"held by {holder}")):
            pass


# -- folders ---------------------------------------------------------------------------------------


def _bundle(folder, text: str) -> None:
    (folder / "model.onnx").write_text(text)
    (folder / "metadata.json").write_text("{}")


def test_a_folder_is_published_whole_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "bundle"
    with atomic.atomic_dir(target, marker="metadata.json") as tmp:
        assert not target.exists() and tmp.parent == tmp_path
        _bundle(tmp, "first")
    assert (target / "model.onnx").read_text() == "first" and _only(tmp_path) == ["bundle"]
    assert (target.stat().st_mode & 0o777) == atomic.dir_mode()
    (target / "old.engine").write_text("belongs to the first model")
    with atomic.atomic_dir(target, marker="metadata.json") as tmp:
        _bundle(tmp, "second")
    assert _only(target) == ["metadata.json", "model.onnx"] and (target / "model.onnx").read_text() == "second"
    assert _only(tmp_path) == ["bundle"]  # no temp or set-aside folder left


def test_a_failed_folder_leaves_the_old_one_or_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="export failed"), atomic.atomic_dir(tmp_path / "new") as tmp:
        (tmp / "model.onnx").write_text("half a bundle")
        raise RuntimeError("export failed")
    assert _only(tmp_path) == []
    target = tmp_path / "bundle"
    target.mkdir()
    _bundle(target, "old")
    with pytest.raises(RuntimeError), atomic.atomic_dir(target, marker="metadata.json") as tmp:
        (tmp / "model.onnx").write_text("half a bundle")
        raise RuntimeError("export failed")
    assert _only(tmp_path) == ["bundle"] and (target / "model.onnx").read_text() == "old"


def test_a_folder_that_is_not_the_callers_is_never_replaced(tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    (target / "precious.csv").write_text("a user's data")
    for marker in (None, "metadata.json"):
        with pytest.raises(FileExistsError, match="results: exists and"), atomic.atomic_dir(target, marker=marker):
            pytest.fail("the block must not run")
    assert _only(target) == ["precious.csv"] and _only(tmp_path) == ["results"]
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(WriteFailed) as e, atomic.atomic_dir(tmp_path / "file") as tmp:
        _bundle(tmp, "new")
    assert e.value.errno == errno.ENOTDIR and (tmp_path / "file").read_text() == "a file, not a folder"
    assert _only(tmp_path) == ["file", "results"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "bundle"
    target.mkdir()
    _bundle(target, "old")
    rename = os.rename

    def fail_second(src, dst):  # the new folder's rename in fails (EACCES, a quota, ...)
        if str(dst) == str(target) and ".old" not in str(src):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", fail_second)
    with pytest.raises(WriteFailed) as e, atomic.atomic_dir(target, marker="metadata.json") as tmp:
        _bundle(tmp, "new")
    assert e.value.errno == errno.EACCES and e.value.target == target
    assert _only(tmp_path) == ["bundle"] and (target / "model.onnx").read_text() == "old"


def test_full_disk_folder_is_write_failed_and_keeps_the_old_one(small_disk):
    target = small_disk / "bundle"
    target.mkdir()
    _bundle(target, "old")
    with pytest.raises(WriteFailed) as e, atomic.atomic_dir(target, marker="metadata.json") as tmp:
        (tmp / "model.onnx").write_bytes(b"\1" * (2 << 20))  # 2 MiB onto a 1 MiB disk
    assert e.value.errno == errno.ENOSPC and str(e.value).startswith(f"{target}: not written: No space left")
    assert _only(small_disk) == ["bundle"] and (target / "model.onnx").read_text() == "old"


def test_first_dir_keeps_the_first_writers_folder(tmp_path):
    target = tmp_path / "entry"
    with atomic.first_dir(target) as a, atomic.first_dir(target) as b:
        (a / "data").write_text("a")
        (b / "data").write_text("b")
        assert not target.exists()
    # `b` closed first (inner block), so its folder is the one published; `a` was dropped.
    assert (target / "data").read_text() == "b" and _only(tmp_path) == ["entry"]
    assert (target.stat().st_mode & 0o777) == atomic.dir_mode()
    with pytest.raises(RuntimeError, match="unpack failed"), atomic.first_dir(tmp_path / "other") as t:
        (t / "part").write_text("half")
        raise RuntimeError("unpack failed")
    assert _only(tmp_path) == ["entry"]  # nothing published, no temp folder left
