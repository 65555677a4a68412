"""`nseg-infer run --cluster` on a dask LocalCluster: the same products as a single-process run,
blocks of a large image stitched exactly as `predict` stitches them, faults and resume."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from infer_testkit import synthetic_blobs
from nseg_data.atomic import TEMP_RE
from PIL import Image
from scipy import ndimage as ndi
from typer.testing import CliRunner

from nseg_infer.engine.predictor import Predictor, RunConfig
from nseg_infer.runners.cli import app
from nseg_infer.runners.cluster.client import ClusterOptions, run_on_cluster
from nseg_infer.runners.cluster.connect import parse_cluster
from nseg_infer.runners.cluster.manifest import MANIFEST_NAME
from nseg_infer.runners.cluster.tasks import WORK_DIR, predictor_loads
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import FileRunner, run
from nseg_infer.sinks.omezarr import array_path, open_labels
from nseg_infer.sinks.outputs import PRODUCTS
from nseg_infer.sources.imageio import open_image

distributed = pytest.importorskip("distributed", reason="needs the dask extra: pip install 'nseg-infer[dask]'")
pytest.importorskip("zarr", reason="needs the dask extra: pip install 'nseg-infer[dask]'")

CONFIG = RunConfig(threads=1)
# Small blocks so a 256 px image has 3 x 3 of them; TIFFs read region by region.
BLOCKS = RunConfig(threads=1, block=96, margin=32)
REGIONS = FileConfig(region_px=10_000)
SPLIT = ClusterOptions(split_px=100 * 100)


@pytest.fixture(scope="module")
def client():
    import cloudpickle
    import cluster_testkit

    # Workers unpickle the kill plugin without importing the test folder.
    cloudpickle.register_pickle_by_value(cluster_testkit)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c) as cl:
        yield cl


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for i, shape in enumerate([(200, 260), (160, 160), (230, 190), (120, 300)]):
        Image.fromarray(synthetic_blobs(shape, 25, seed=i)[0]).save(d / f"img{i}.png")
    return d


def corner_image(side: int, centres: list[tuple[int, int]], radius: int, seed: int = 0) -> np.ndarray:
    """Bright discs centred on `centres` plus a few random ones, blurred, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    img = np.full((side, side), 15.0, np.float32)
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 200
    extra, _ = synthetic_blobs((side, side), 12, seed=seed)
    img = np.maximum(img, extra.astype(np.float32))
    img = ndi.gaussian_filter(img, 1.0) + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _masked(path: Path) -> bytes:
    # tifffile writes a fresh OME UUID into every file: two single-process runs differ there too.
    return re.sub(rb"urn:uuid:[0-9a-f-]{36}", b"urn:uuid:" + b"0" * 36, path.read_bytes())


def _summary(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("seconds")
        r["labels"] = Path(r["labels"]).name
    return rows


def _same_file(f: Path, g: Path) -> bool:
    if f.name.endswith(".tif"):
        return _masked(f) == _masked(g)
    if f.name.endswith(".gz"):  # the gzip header holds a time stamp and the temp file's name
        return gzip.decompress(f.read_bytes()) == gzip.decompress(g.read_bytes())
    if f.name.endswith(".zip"):  # so do zip entries
        with zipfile.ZipFile(f) as zf, zipfile.ZipFile(g) as zg:
            return zf.namelist() == zg.namelist() and all(zf.read(n) == zg.read(n) for n in zf.namelist())
    if f.name.endswith(".ome.zarr"):  # the labels and their NGFF metadata
        za, zb = open_labels(array_path(f)), open_labels(array_path(g))
        return (np.array_equal(np.asarray(za), np.asarray(zb)) and za.dtype == zb.dtype and za.chunks == zb.chunks
                and [json.loads(p.read_text()) for p in sorted(f.rglob(".z*"))]
                == [json.loads(p.read_text()) for p in sorted(g.rglob(".z*"))])
    return f.read_bytes() == g.read_bytes()


def _same_products(a: Path, b: Path) -> list[str]:
    """Names of products of `a` that differ in `b` or are missing there (labels TIFFs compared
    without their OME UUID)."""
    bad = []
    for f in sorted(a.iterdir()):
        if f.name == "summary.csv" or not (f.is_file() or f.name.endswith(".ome.zarr")):
            continue
        g = b / f.name
        if not (g.exists() and _same_file(f, g)):
            bad.append(f.name)
    return bad


def _no_leftovers(out: Path) -> None:
    stray = [p.name for p in out.rglob("*") if TEMP_RE.match(p.name)]
    assert not stray, stray
    assert not (out / WORK_DIR).exists() or not any((out / WORK_DIR).iterdir())


def test_cluster_spec_is_parsed_or_refused():
    assert parse_cluster("local:3") == 3
    assert parse_cluster("tcp://10.0.0.1:8786") == "tcp://10.0.0.1:8786"
    for bad in ("local:0", "local:x", "somewhere"):
        with pytest.raises(ValueError, match="--cluster"):
            parse_cluster(bad)


def test_files_match_single_process_in_any_submission_order(client, folder, tmp_path):
    single = tmp_path / "single"
    run([folder], single, runner=FileRunner(Predictor(None, CONFIG)))
    out = tmp_path / "dist"
    before = client.run(predictor_loads)
    report = run_on_cluster(client, [folder], out, config=CONFIG, options=ClusterOptions(shuffle_seed=7))
    assert not report.failed and report.reused == ()
    assert _same_products(single, out) == []
    assert _summary(out / "summary.csv") == _summary(single / "summary.csv")
    # The model is loaded once per worker (at most), not once per task: 4 tasks on 2 workers.
    loads = {w: n - before.get(w, 0) for w, n in client.run(predictor_loads).items()}
    assert sum(loads.values()) >= 1 and max(loads.values()) <= 1, loads


def test_cli_connects_to_a_running_scheduler(client, folder, tmp_path):
    res = CliRunner().invoke(app, ["run", str(folder / "img1.png"), "--out", str(tmp_path / "o"), "--device", "cpu",
                                   "--cluster", client.scheduler.address])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "img1.labels.tif").exists() and (tmp_path / "o" / MANIFEST_NAME).exists()
    res = CliRunner().invoke(app, ["run", str(folder), "--out", str(tmp_path / "o"), "--cluster", "nowhere"])
    assert res.exit_code == 2 and "--cluster" in res.output


def test_large_image_blocks_equal_predict_with_nuclei_on_four_block_corners(client, tmp_path):
    corners = [(96, 96), (96, 192), (192, 96), (192, 192)]
    # Nuclei of about 18 px, clear of the model's 14 px minimum: the image is planned in blocks, not enlarged.
    img = corner_image(256, [*corners, (96, 40), (40, 192)], radius=9)
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, img, tile=(64, 64))
    predictor = Predictor(None, BLOCKS)
    with open_image(src, region_threshold_px=REGIONS.region_px) as im:
        assert im.is_region_reader
        expected = predictor.predict(im)
    for cy, cx in corners:  # one nucleus across the four blocks, not four pieces
        assert expected.labels[cy, cx] > 0
        assert len(np.unique(expected.labels[cy - 4:cy + 5, cx - 4:cx + 5])) == 1
    small = tmp_path / "small.png"  # below split_px: one file task beside the blocks
    Image.fromarray(synthetic_blobs((90, 100), 8, seed=5)[0]).save(small)
    single = tmp_path / "single"
    run([src, small], single, runner=FileRunner(predictor, REGIONS))
    out = tmp_path / "dist"
    report = run_on_cluster(client, [src, small], out, config=BLOCKS, file_config=REGIONS,
                            options=ClusterOptions(split_px=100 * 100, shuffle_seed=3))
    assert not report.failed, report.failed
    assert report.blocks_computed == 9 and report.blocks_reused == 0
    # --products alone decides what is written: no OME-Zarr unless `zarr` is chosen, split or not.
    assert not list(out.glob("*.ome.zarr"))
    assert expected.max_label >= 6
    np.testing.assert_array_equal(tifffile.imread(out / "big.labels.tif"), expected.labels)
    assert _same_products(single, out) == []
    assert _summary(out / "summary.csv") == _summary(single / "summary.csv")
    _no_leftovers(out)


def test_split_image_every_product_equals_single_process(client, tmp_path):
    """Every product of a split image, its nuclei measured by one task per product block and the
    parts concatenated by one task, equals a single-process run's: CSV and GeoJSON byte for byte,
    ROIs entry by entry, labels TIFF, overlay and OME-Zarr labels. A 4x overview trims the 90 px
    instance blocks to 88 px product blocks, so the two grids differ here."""
    cfg = RunConfig(threads=1, block=90, margin=32)
    files = FileConfig(overview_side=64, products=PRODUCTS, block=90)
    img = corner_image(256, [(90, 90), (88, 176), (176, 88), (180, 180)], radius=7, seed=6)
    src = tmp_path / "big.png"
    Image.fromarray(img).save(src)
    single = tmp_path / "single"
    [expected] = run([src], single, runner=FileRunner(Predictor(None, cfg), files))
    out = tmp_path / "dist"
    report = run_on_cluster(client, [src], out, config=cfg, file_config=files, options=ClusterOptions(split_px=100 * 100, shuffle_seed=5))
    assert not report.failed, report.failed
    assert report.blocks_computed == 9
    [r] = report.results
    assert [p.name for p in r.outputs] == [p.name for p in expected.outputs] == [
        "big.labels.tif", "big.csv", "big.overlay.png", "big.geojson", "big.geojson.gz", "big.rois.zip", "big.ome.zarr"]
    assert r.n_nuclei == expected.n_nuclei
    rows = list(csv.DictReader((out / "big.csv").read_text().splitlines()))
    # Nuclei owned by several product blocks (88 px apart), so the parts of many blocks are joined.
    assert len({(int(row["bbox_y0"]) // 88, int(row["bbox_x0"]) // 88) for row in rows}) >= 4
    assert _same_products(single, out) == []
    assert _summary(out / "summary.csv") == _summary(single / "summary.csv")
    _no_leftovers(out)
    ome_zarr = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    nodes = list(ome_zarr.Reader(parse_url(str(out / "big.ome.zarr")))())
    label_nodes = [n for n in nodes if any(type(s).__name__ == "Label" for s in n.specs)]
    assert len(label_nodes) == 1
    np.testing.assert_array_equal(np.asarray(label_nodes[0].data[0]), tifffile.imread(out / "big.labels.tif"))


def test_nucleus_larger_than_the_block_margin_is_reported(client, tmp_path):
    cfg = RunConfig(threads=1, block=96, margin=8)
    src = tmp_path / "clump.png"
    Image.fromarray(corner_image(192, [(96, 96)], radius=16, seed=2)).save(src)
    with open_image(src) as im:
        expected = Predictor(None, cfg).predict(im)
    assert expected.cut_clumps >= 1
    report = run_on_cluster(client, [src], tmp_path / "out", config=cfg, options=SPLIT)
    assert not report.failed
    assert report.cut_clumps == ((src, expected.cut_clumps),)
    assert any("exceed the block margin" in w for w in report.warnings)
    assert expected.max_label >= 1
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "clump.labels.tif"), expected.labels)


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(client, folder, tmp_path):
    import cluster_testkit

    single = tmp_path / "single"
    run([folder], single, runner=FileRunner(Predictor(None, CONFIG)))
    marker = tmp_path / "killed"
    client.register_plugin(cluster_testkit.KillOnce("nseg-file-", str(marker)))
    try:
        out = tmp_path / "dist"
        report = run_on_cluster(client, [folder], out, config=CONFIG)
    finally:
        client.unregister_worker_plugin(cluster_testkit.KillOnce.name)
    assert marker.exists(), "no worker was killed: the test did not test anything"
    assert not report.failed, report.failed
    rows = _summary(out / "summary.csv")
    assert [r["input"] for r in rows] == [str(p) for p in sorted(folder.iterdir())]
    assert rows == _summary(single / "summary.csv")
    assert _same_products(single, out) == []
    assert sorted(json.loads((out / MANIFEST_NAME).read_text())["files"]) == sorted(str(p) for p in folder.iterdir())
    _no_leftovers(out)
    client.wait_for_workers(2, timeout=60)


def test_killed_block_fails_its_image_and_a_rerun_redoes_only_the_missing_blocks(client, tmp_path):
    import cluster_testkit

    img = corner_image(256, [(96, 96), (192, 192)], radius=7, seed=4)
    src = tmp_path / "big.png"
    Image.fromarray(img).save(src)
    with open_image(src) as im:
        expected = Predictor(None, BLOCKS).predict(im)
    out = tmp_path / "dist"
    marker = tmp_path / "killed"
    sched = client.cluster.scheduler
    allowed, sched.allowed_failures = sched.allowed_failures, 0  # a death fails the task at once
    client.register_plugin(cluster_testkit.KillOnce("nseg-block-", str(marker)))
    try:
        first = run_on_cluster(client, [src], out, config=BLOCKS, file_config=REGIONS, options=SPLIT)
    finally:
        client.unregister_worker_plugin(cluster_testkit.KillOnce.name)
        sched.allowed_failures = allowed
    assert marker.exists()
    assert len(first.failed) == 1 and "big.png" in first.failed[0].error
    assert 1 <= first.blocks_computed < 9
    assert not (out / "big.labels.tif").exists()
    client.wait_for_workers(2, timeout=60)
    second = run_on_cluster(client, [src], out, config=BLOCKS, file_config=REGIONS, options=SPLIT)
    assert not second.failed
    assert second.blocks_reused == first.blocks_computed
    assert second.blocks_computed == 9 - first.blocks_computed
    assert expected.max_label >= 2
    np.testing.assert_array_equal(tifffile.imread(out / "big.labels.tif"), expected.labels)
    _no_leftovers(out)


def test_resume_recomputes_only_unfinished_files(client, folder, tmp_path):
    out = tmp_path / "dist"
    files = sorted(folder.iterdir())
    first = run_on_cluster(client, files[:2], out, config=CONFIG)
    assert not first.failed and first.reused == ()

    def stamp(p: Path) -> tuple[int, int]:
        st = (out / f"{p.stem}.labels.tif").stat()
        return st.st_ino, st.st_mtime_ns

    before = {p: stamp(p) for p in files[:2]}
    (out / f"{files[1].stem}.csv").unlink()  # recorded as done, but a product is gone: done again
    second = run_on_cluster(client, [folder], out, config=CONFIG)
    assert not second.failed
    assert second.reused == (files[0],)
    assert stamp(files[0]) == before[files[0]]
    assert stamp(files[1]) != before[files[1]]
    assert [r.input for r in second.results] == files
    assert all((out / f"{p.stem}.csv").exists() for p in files)
    third = run_on_cluster(client, [folder], out, config=CONFIG)
    assert third.reused == tuple(files)
    # Other settings: the record does not apply, every file is done again.
    fourth = run_on_cluster(client, [folder], out, config=CONFIG,
                            file_config=FileConfig(products="labels,csv"))
    assert fourth.reused == ()
    assert len(_summary(out / "summary.csv")) == len(files)
    assert os.path.exists(out / MANIFEST_NAME)
