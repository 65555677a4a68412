"""The folder watch groups small images by the tile shape the model sees: after `--diameter`
rescaling and a bundle's `resize`, not at the file's own size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from nseg_infer.engine.predictor import Predictor
from nseg_infer.engine.tiling import tile_grid
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.watch.config import Job, WatchConfig
from nseg_infer.runners.watch.watcher import Watcher
from nseg_infer.sources.options import InputOptions


def watcher(bundle: Path, tmp_path: Path, **inputs) -> Watcher:
    (tmp_path / "in").mkdir(parents=True, exist_ok=True)
    return Watcher(Predictor(bundle), WatchConfig(tmp_path / "in", tmp_path / "out"),
                   FileConfig(InputOptions(**inputs)))


def key(w: Watcher, shape: tuple[int, int]):
    return w.batch_key(Job(1, Path("x.png"), 1, shape, None))


def grid_shape(w: Watcher, h: int, wd: int) -> tuple[int, int]:
    p = w.predictor
    return tile_grid(h, wd, p.tile, p.halo, p.bundle.preprocessing.size_divisor).tile_shape


def variant(src: Path, dst: Path, **sections) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    for name, values in sections.items():
        meta[name] = {**(meta.get(name) or {}), **values}
    (dst / "metadata.json").write_text(json.dumps(meta))
    return dst


def test_batch_key_follows_diameter_rescaling(unet_bundle, tmp_path):
    bundle = variant(unet_bundle, tmp_path / "scaled", scale={"nucleus_diameter_px": 20.0})
    plain = watcher(bundle, tmp_path)
    doubled = watcher(bundle, tmp_path, diameter=10.0)  # every image enlarged twice for the model
    assert key(plain, (30, 30)) == grid_shape(plain, 30, 30)
    # 30 px becomes 60 px: a larger tile; 50 px becomes 100 px: more than one tile, no group.
    assert key(doubled, (30, 30)) == grid_shape(doubled, 60, 60) != key(plain, (30, 30))
    assert key(plain, (50, 50)) is not None and key(doubled, (50, 50)) is None


def test_batch_key_follows_the_bundles_resize(unet_bundle, tmp_path):
    bundle = variant(unet_bundle, tmp_path / "resize", preprocessing={"resize": 64})
    w = watcher(bundle, tmp_path)
    # Every image is resized to 64 x 64 for the model, so images of any size share model calls.
    assert key(w, (40, 50)) == key(w, (300, 90)) == grid_shape(w, 64, 64)


def test_no_group_when_the_scale_comes_from_each_files_pixel_size(unet_bundle, tmp_path):
    bundle = variant(unet_bundle, tmp_path / "um", scale={"pixel_size_um": 0.5})
    assert key(watcher(bundle, tmp_path / "a"), (60, 60)) is None
    told = watcher(bundle, tmp_path / "b", pixel_size_um=0.25)  # the same for every file: halved
    assert key(told, (100, 100)) == grid_shape(told, 50, 50)
