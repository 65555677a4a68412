"""A bundle export is published whole: under the bundle's name there is the old bundle or the new
one at every moment, never a folder without metadata.json, also when the export fails midway."""

from __future__ import annotations

import errno
import os

import pytest
from export_helpers import copy_bundle
from nseg_data import atomic
from nseg_infer.engine.bundle import load_bundle

from nseg_export import onnx_export
from nseg_export.onnx_export import ExportError, export_checkpoint


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture()
def disk_full_after_model(monkeypatch):
    """Interrupts an export once model.onnx is written: making metadata.json finds the disk full."""
    written = []

    def full(*, model_path, **_):
        assert model_path.stat().st_size > 0  # the model file really is there
        written.append(model_path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx_export, "build_metadata", full)
    return written


def test_an_interrupted_first_export_leaves_nothing(unet_ckpt, tmp_path, disk_full_after_model):
    out = tmp_path / "bundles" / "unet"
    with pytest.raises(ExportError, match=r"unet: not written: No space left on device \(ENOSPC\)"):
        export_checkpoint(unet_ckpt, out)
    assert disk_full_after_model and listing(tmp_path / "bundles") == []


def test_an_interrupted_export_leaves_the_old_bundle_as_it_was(unet_ckpt, unet_bundle, tmp_path, disk_full_after_model):
    out = copy_bundle(unet_bundle, tmp_path / "unet")
    before = contents(out)
    with pytest.raises(ExportError, match="No space left on device"):
        export_checkpoint(unet_ckpt, out)
    assert disk_full_after_model and contents(out) == before and listing(tmp_path) == ["unet"]
    load_bundle(out)


def test_replacing_a_bundle_never_shows_a_folder_without_metadata(unet_ckpt, unet_bundle, tmp_path, monkeypatch):
    out = copy_bundle(unet_bundle, tmp_path / "unet")
    (out / "model.fp32.gpu.engine").write_bytes(b"an engine of the old model")
    rename, states = os.rename, []

    def checked_rename(src, dst):  # renames are the only steps that change what is under `out`
        rename(src, dst)
        states.append(sorted(p.name for p in out.iterdir()) if out.exists() else None)
        assert not out.exists() or (out / "metadata.json").is_file(), states

    monkeypatch.setattr(atomic.os, "rename", checked_rename)
    export_checkpoint(unet_ckpt, out)
    assert len(states) == 2  # the old bundle set aside, the new one renamed in
    # The whole old bundle went: its fp16 variant and the engine built for its model.
    assert listing(out) == ["metadata.json", "model.onnx"] and listing(tmp_path) == ["unet"]
    assert load_bundle(out).metadata["engines"] == []


def test_a_folder_that_is_not_a_bundle_is_not_replaced(unet_ckpt, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("a user's notes")
    with pytest.raises(ExportError, match=r"results: exists and has no metadata\.json"):
        export_checkpoint(unet_ckpt, out)
    assert listing(out) == ["notes.txt"] and listing(tmp_path) == ["results"]


def test_a_bioimageio_folder_is_published_whole_and_replaced_whole(tmp_path):
    from nseg_export.bioimageio_export import RDF_NAME, build_package

    out = tmp_path / "package"
    build_package("default", out)
    first = listing(out)
    assert RDF_NAME in first and "model.onnx" in first
    (out / "left.over").write_text("not part of the new package")
    build_package("default", out)
    assert listing(out) == first and listing(tmp_path) == ["package"]
