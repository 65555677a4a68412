"""`process_many` overlaps reading, segmenting and writing across files: its files and results
must be exactly those of `process_file` run one file after another, failures included."""

from __future__ import annotations

import csv
import gzip
import re
import threading
import time
import zipfile

import imagecodecs
import numpy as np
import pytest
import tifffile
from infer_testkit import synthetic_blobs
from PIL import Image

from nseg_infer.engine.predictor import Predictor, RunConfig
from nseg_infer.engine.stages import Worker
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.files import FileRunner
from nseg_infer.sinks.outputs import PRODUCTS


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Good files around a corrupt one, and a file whose products cannot be written."""
    d = tmp_path_factory.mktemp("batch")
    files = []
    for k, (shape, n) in enumerate((((200, 260), 50), ((160, 300), 40), ((240, 180), 60), ((150, 150), 30))):
        img, _ = synthetic_blobs(shape, n, seed=20 + k)
        p = d / f"img{k}.png"
        p.write_bytes(imagecodecs.png_encode(img))
        files.append(p)
    tifffile.imwrite(d / "deep.tif", synthetic_blobs((210, 230), 45, seed=9)[0].astype(np.uint16) * 150)
    data = files[0].read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 3])
    (d / "unwritable.png").write_bytes(files[1].read_bytes())
    return [files[0], files[1], d / "cut.png", d / "deep.tif", d / "unwritable.png", files[2], files[3]]


def _block_writing(out):
    out.mkdir(parents=True)
    (out / "unwritable.csv").mkdir()  # the CSV cannot be renamed onto a folder: a write failure


def _error(message, out):
    """An error message without its output folder and temp file names."""
    return None if message is None else re.sub(r"\.[^ ']*\.tmp\.\w+", "TMP", message.replace(str(out), "OUT"))


def _same_products(a, b):
    for pa in sorted(a.iterdir()):
        pb = b / pa.name
        if pa.is_dir() or pa.name == "summary.csv":
            continue
        if pa.name.endswith(".tif"):
            assert np.array_equal(tifffile.imread(pa), tifffile.imread(pb)), pa.name
        elif pa.name.endswith(".png"):
            assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb))), pa.name
        elif pa.name.endswith(".gz"):  # the gzip header holds a time stamp
            assert gzip.decompress(pa.read_bytes()) == gzip.decompress(pb.read_bytes()), pa.name
        elif pa.name.endswith(".zip"):  # so do zip entries
            with zipfile.ZipFile(pa) as za, zipfile.ZipFile(pb) as zb:
                assert za.namelist() == zb.namelist() and all(za.read(n) == zb.read(n) for n in za.namelist())
        else:
            assert pa.read_bytes() == pb.read_bytes(), pa.name
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir() if p.name != "summary.csv")


@pytest.mark.parametrize("large", [False, True])
def test_pipelined_batch_equals_one_file_at_a_time(unet_bundle, batch, tmp_path, large):
    # large: every image's labels go to a disk-backed canvas, and each waits for an idle writer.
    config = RunConfig(**({"block": 128, "margin": 48} if large else {}))
    predictor = Predictor(unet_bundle, config)
    files = FileConfig(products=PRODUCTS, **({"large_px": 10_000, "block": 128} if large else {}))
    one, many = tmp_path / "one", tmp_path / "many"
    _block_writing(one)
    _block_writing(many)
    singles = [FileRunner(predictor, files).process_file(p, one) for p in batch]
    seen = []
    results = FileRunner(predictor, files).process_many(batch, many, progress=seen.append)
    assert [r.input for r in results] == [r.input for r in seen] == batch
    for r, s in zip(results, singles, strict=True):
        assert (r.ok, r.n_nuclei, r.height, r.width) == (s.ok, s.n_nuclei, s.height, s.width)
        assert _error(r.error, many) == _error(s.error, one)
        assert [p.name for p in r.outputs] == [p.name for p in s.outputs]
    assert [r.ok for r in results] == [True, True, False, True, False, True, True]
    assert str(batch[2]) in results[2].error and str(many / "unwritable.csv") in results[4].error
    _same_products(one, many)
    with open(many / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["input"] for r in rows] == [str(p) for p in batch]
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "ok", "error", "ok", "ok"]
    # No temp files or canvases left behind, failures included.
    assert not [p for p in many.iterdir() if p.name.startswith(".")]


def test_worker_wait_returns_when_every_item_is_handled():
    done = []

    def slow(item):
        time.sleep(0.05)
        done.append(item)

    w = Worker(slow, 1, name="test-writer")
    for i in range(3):
        w.put(i)
    w.wait()
    assert done == [0, 1, 2]
    w.close()
    assert not [t for t in threading.enumerate() if t.name == "test-writer"]


def test_worker_error_surfaces_and_wait_still_returns():
    def fail(item):
        raise ValueError(f"bad {item}")

    w = Worker(fail, 1)
    w.put(1)
    w.wait()
    with pytest.raises(ValueError, match="bad 1"):
        w.put(2)
    with pytest.raises(ValueError, match="bad 1"):
        w.close()
