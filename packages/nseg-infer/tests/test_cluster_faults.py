"""Cluster faults as users meet them: a scheduler that does not answer, a worker that dies in the
middle of a block (standing in for one killed by running out of memory), and a second run on the
same output folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
from infer_testkit import synthetic_blobs, write_bundle
from PIL import Image
from typer.testing import CliRunner

from nseg_infer.engine.predictor import Predictor, RunConfig
from nseg_infer.runners.cli import app
from nseg_infer.runners.cluster.client import LOCK_NAME, ClusterError, ClusterOptions, run_on_cluster
from nseg_infer.runners.cluster.connect import connect
from nseg_infer.runners.file_config import FileConfig
from nseg_infer.runners.watch.config import LOCK_NAME as WATCH_LOCK
from nseg_infer.runners.watch.config import WatchConfig, WatchError
from nseg_infer.runners.watch.watcher import Watcher
from nseg_infer.sources.imageio import open_image
from nseg_infer.sources.options import InputOptions

distributed = pytest.importorskip("distributed", reason="needs the dask extra: pip install 'nseg-infer[dask]'")
pytest.importorskip("zarr", reason="needs the dask extra: pip install 'nseg-infer[dask]'")

BLOCKS = RunConfig(threads=1, block=96, margin=32)
# The nuclei's size is given (at least the default's 14 px minimum: not enlarged), so each image is
# planned in blocks whatever a measure of its small synthetic nuclei would say: these tests are of blocks.
REGIONS = FileConfig(region_px=10_000, inputs=InputOptions(diameter=20.0))
SPLIT = ClusterOptions(split_px=100 * 100)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_a_closed_scheduler_port_fails_within_the_timeout_naming_it():
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as e, connect(address, timeout=2):
        pass
    assert f"scheduler {address} did not answer within 2 s" in str(e.value)
    assert time.monotonic() - t0 < 25  # dask's own default would retry for 30 s


def test_a_scheduler_address_that_accepts_but_never_answers_fails_too():
    # A wrong port or a tarpit: the TCP connection opens, nothing ever replies. Without its own
    # deadline the client would wait forever here.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
    try:
        with pytest.raises(ClusterError, match=f"scheduler {address} did not answer within 2 s"), \
                connect(address, timeout=2):
            pass
    finally:
        silent.close()


def test_cli_names_the_unreachable_scheduler(tmp_path, monkeypatch):
    import nseg_infer.runners.cluster.connect as cc

    monkeypatch.setattr(cc, "CONNECT_TIMEOUT", 2.0)
    Image.fromarray(synthetic_blobs((64, 64), 4)[0]).save(tmp_path / "a.png")
    address = f"tcp://127.0.0.1:{_free_port()}"
    res = CliRunner().invoke(app, ["run", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--cluster", address])
    assert res.exit_code == 2 and f"scheduler {address} did not answer within 2 s" in res.output


@pytest.fixture(scope="module")
def client():
    import cloudpickle
    import cluster_testkit

    cloudpickle.register_pickle_by_value(cluster_testkit)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c) as cl:
        yield cl


def test_a_worker_dying_mid_block_is_retried_elsewhere_with_identical_labels(client, tmp_path):
    """A worker killed by the kernel's OOM killer (or dask's memory limit) vanishes without a word
    in the middle of a task; `os._exit` inside the block task does the same here, deterministically."""
    import cluster_testkit

    img = synthetic_blobs((256, 256), 60, seed=11)[0]
    src = tmp_path / "big.png"
    Image.fromarray(img).save(src)
    with open_image(src) as im:
        expected = Predictor(None, BLOCKS).predict(im)
    marker = tmp_path / "died"
    client.register_plugin(cluster_testkit.KillOnce("nseg-block-", str(marker)))
    try:
        report = run_on_cluster(client, [src], tmp_path / "out", config=BLOCKS, file_config=REGIONS, options=SPLIT)
    finally:
        client.unregister_worker_plugin(cluster_testkit.KillOnce.name)
    assert marker.exists(), "no worker died: the test did not test anything"
    assert not report.failed, report.failed
    assert report.blocks_computed == 9
    assert expected.max_label >= 30
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "big.labels.tif"), expected.labels)
    client.wait_for_workers(2, timeout=60)


def _hold_lock(path) -> subprocess.Popen:
    """Another process holding an output folder's lock, as a running `nseg-infer` would."""
    code = ("import sys; from pathlib import Path; from nseg_data.atomic import exclusive_lock\n"
            f"with exclusive_lock(Path({str(path)!r})):\n    print('held', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _release(p: subprocess.Popen) -> None:
    p.stdin.close()
    p.wait(timeout=30)


def test_a_second_cluster_run_on_the_same_out_names_the_holder(client, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(synthetic_blobs((64, 64), 4)[0]).save(tmp_path / "a.png")
    holder = _hold_lock(out / LOCK_NAME)
    try:
        with pytest.raises(ClusterError) as e:
            run_on_cluster(client, [tmp_path / "a.png"], out, config=RunConfig(threads=1))
        assert f"host {socket.gethostname()} pid {holder.pid}" in str(e.value)
        assert not (out / "a.labels.tif").exists()
    finally:
        _release(holder)
    assert not run_on_cluster(client, [tmp_path / "a.png"], out, config=RunConfig(threads=1)).failed


def test_a_second_watch_on_the_same_out_names_the_holder(tmp_path):
    out, inp = tmp_path / "out", tmp_path / "in"
    out.mkdir()
    inp.mkdir()
    holder = _hold_lock(out / WATCH_LOCK)
    try:
        w = Watcher(Predictor(write_bundle(tmp_path / "b")), WatchConfig(inp, out, once=True, events=False))
        with pytest.raises(WatchError, match=f"host {socket.gethostname()} pid {holder.pid}"):
            w.run()
    finally:
        _release(holder)
    assert holder.pid != os.getpid()


def test_a_worker_out_of_memory_mid_block_is_restarted_and_the_block_rerun(tmp_path):
    """A real out-of-memory death: the block's worker grows past its memory limit and dask's nanny
    kills it, as it would a block too big for the worker; the block runs again, labels identical."""
    import cloudpickle
    import cluster_oom_kit

    cloudpickle.register_pickle_by_value(cluster_oom_kit)
    img = synthetic_blobs((256, 256), 60, seed=12)[0]
    src = tmp_path / "big.png"
    Image.fromarray(img).save(src)
    with open_image(src) as im:
        expected = Predictor(None, BLOCKS).predict(im)
    marker = tmp_path / "oom"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit="1GiB") as cluster, distributed.Client(cluster) as cl:
        cl.register_plugin(cluster_oom_kit.OutOfMemoryOnce("nseg-block-", str(marker)))
        report = run_on_cluster(cl, [src], tmp_path / "out", config=BLOCKS, file_config=REGIONS, options=SPLIT)
    assert marker.exists(), "no block ran out of memory: the test did not test anything"
    assert not (tmp_path / "oom.not-killed").exists(), "the worker outgrew its limit but was not killed"
    assert not report.failed, report.failed
    assert expected.max_label >= 30
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "big.labels.tif"), expected.labels)
