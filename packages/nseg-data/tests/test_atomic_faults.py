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


@pytest.fixture()
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk. Unmounted at the end, also when the test fails."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield d
    if subprocess.run(["umount", str(d)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


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
