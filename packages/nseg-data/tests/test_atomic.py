"""The one atomic writer: all or nothing, ordinary permissions, recognisable temp names."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from nseg_data.atomic import atomic_path, write_bytes_atomic, write_text_atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_failure_keeps_the_old_target_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "result.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half a new fi")
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["result.csv"]
    assert target.read_text() == "old"


def test_success_replaces_the_target_with_mode_0666_minus_umask(tmp_path, umask_027):
    target = tmp_path / "sub" / "labels.tif"
    with atomic_path(target) as tmp:
        # Hidden, beside the target, same suffix (format sniffing), and not the target yet.
        assert tmp.parent == target.parent and tmp.name.startswith(".labels.tif.") and tmp.suffix == ".tif"
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600  # mkstemp's private mode while unpublished
        tmp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["labels.tif"]


def test_mode_is_set_even_when_the_writer_replaces_the_temp_file(tmp_path, umask_027):
    # np.savez writes to the path it is given; the published file must still get the ordinary mode.
    target = tmp_path / "cache.npz"
    with atomic_path(target) as tmp:
        np.savez_compressed(tmp, a=np.arange(3))
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    with np.load(target) as z:
        assert z["a"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npz"]


def test_bytes_and_text_helpers_overwrite(tmp_path):
    p = tmp_path / "a.json"
    assert write_bytes_atomic(p, b"1") == p and p.read_bytes() == b"1"
    write_text_atomic(p, "zwei \u00e9")
    assert p.read_text(encoding="utf-8") == "zwei \u00e9"
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"]
