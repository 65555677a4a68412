"""`nseg-infer watch` as a real subprocess: slow copies, bursts, bad files, kill -9 and restart,
changed files, SIGTERM, `status` and `--retry-failed`. No timing asserts."""

from __future__ import annotations

import collections
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from infer_testkit import synthetic_blobs
from nseg_data.atomic import TEMP_RE

from nseg_infer.engine.predictor import Predictor
from nseg_infer.runners.files import FileRunner
from nseg_infer.runners.watch.config import LOG_NAME
from nseg_infer.runners.watch.ledger import LEDGER_NAME, Ledger

FAST = ["--settle", "0.3", "--fail-after", "0.6", "--poll", "0.2"]
DONE_RE = re.compile(r" (done|failed) (\S+) ")


def cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nseg_infer.runners.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def start(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nseg_infer.runners.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def png(shape=(64, 64), n=4, seed=0) -> bytes:
    return imagecodecs.png_encode(synthetic_blobs(shape, n, seed=seed)[0])


def rows(out: Path) -> list:
    with Ledger(out / LEDGER_NAME, create=False) as led:
        return led.rows()


def current(out: Path) -> dict[str, object]:
    with Ledger(out / LEDGER_NAME, create=False) as led:
        return {Path(r.path).name: r for r in led.current()}


def current_if_ready(out: Path) -> dict[str, object]:
    """`current`, or {} while the watcher has not yet created the ledger's table."""
    try:
        return current(out)
    except (FileNotFoundError, sqlite3.OperationalError):
        return {}


def is_done(out: Path, name: str):
    def check() -> bool:
        row = current_if_ready(out).get(name)
        return row is not None and row.state == "done"
    return check


def log_events(out: Path) -> collections.Counter:
    text = (out / LOG_NAME).read_text() if (out / LOG_NAME).exists() else ""
    return collections.Counter(m.groups() for m in DONE_RE.finditer(text))


def wait_for(cond, timeout: float = 60.0, step: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("condition not met in time")


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if TEMP_RE.match(p.name)]


def test_burst_bad_files_status_retry_and_changed_file(unet_bundle, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    n = 20  # with --batch 8: two full batches and a partial one
    for i in range(n):
        (src / f"img{i:03d}.png").write_bytes(png(seed=i % 7))
    (src / "zero.png").write_bytes(b"")
    good = png(seed=1)
    (src / "cut.png").write_bytes(good[: len(good) // 2])
    (src / "fake.tif").write_bytes(b"not a tiff at all")
    (src / "notes.txt").write_text("not an image: ignored by the default pattern")
    r = cli("watch", src, "--out", out, "--model", unet_bundle, "--once", "--batch", "8", *FAST)
    assert r.returncode == 0, r.stderr
    cur = current(out)
    assert len(cur) == n + 3 and len(rows(out)) == n + 3
    failed = {n for n, row in cur.items() if row.state == "failed"}
    assert failed == {"zero.png", "cut.png", "fake.tif"}
    assert "empty file" in cur["zero.png"].error and "cut.png" in cur["cut.png"].error
    for i in range(n):
        row = cur[f"img{i:03d}.png"]
        assert row.state == "done" and row.attempts == 1 and row.n_nuclei > 0
        assert all(Path(p).is_file() for p in row.outputs) and len(row.outputs) == 4
    events = log_events(out)
    assert sum(v for (kind, _), v in events.items() if kind == "done") == n
    assert max(events.values()) == 1 and not temp_files(out)
    assert (out / "summary.csv").read_text().count("\n") == n + 4

    st = cli("status", out)
    assert st.returncode == 0, st.stderr
    assert f"{n + 3} inputs: {n} done, 3 failed, 0 pending, 0 running" in st.stdout
    assert f"last hour: {n} done, 3 failed" in st.stdout
    assert "empty file (0 bytes)" in st.stdout and "not a readable TIFF" in st.stdout

    # Restart over the same folder: nothing is redone.
    r = cli("watch", src, "--out", out, "--model", unet_bundle, "--once", *FAST)
    assert r.returncode == 0 and log_events(out) == events

    # --retry-failed: the bad files are tried again (and fail again), the rest left alone.
    r = cli("watch", src, "--out", out, "--model", unet_bundle, "--once", "--retry-failed", *FAST)
    assert r.returncode == 0, r.stderr
    assert log_events(out)[("failed", "zero.png")] == 2 and log_events(out)[("done", "img000.png")] == 1

    # Changed files (same path, new content) are processed again; the copy finished, so cut.png works now.
    (src / "cut.png").write_bytes(good)
    (src / "img005.png").write_bytes(png((96, 80), 6, seed=42))
    r = cli("watch", src, "--out", out, "--model", unet_bundle, "--once", *FAST)
    assert r.returncode == 0, r.stderr
    cur = current(out)
    assert cur["cut.png"].state == "done" and cur["img005.png"].state == "done"
    assert tifffile.imread(out / "img005.labels.tif").shape == (96, 80)
    assert log_events(out)[("done", "img005.png")] == 2 and len(rows(out)) == n + 5
    assert "2 older versions" in cli("status", out).stdout


def test_slow_copy_is_never_read_early_and_sigterm(unet_bundle, tmp_path):
    src, out, ref = tmp_path / "in", tmp_path / "out", tmp_path / "ref"
    src.mkdir()
    (tmp_path / "big.png").write_bytes(png((300, 420), 100, seed=3))
    expected = FileRunner(Predictor(unet_bundle)).process_file(tmp_path / "big.png", ref)
    # The real watcher, with one hook: when it takes large.png in hand it says so (`in_hand`) and
    # waits for `go` before segmenting it, so the SIGTERM below lands while that file is in hand.
    in_hand, go = tmp_path / "in_hand", tmp_path / "go"
    hook = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from nseg_infer.runners import cli, files\n"
        "in_hand, go = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "real = files.FileRunner.process_file\n"
        "def held(self, path, out_dir):\n"
        "    if Path(path).name == 'large.png':\n"
        "        in_hand.touch()\n"
        "        while not go.exists():\n"
        "            time.sleep(0.01)\n"
        "    return real(self, path, out_dir)\n"
        "files.FileRunner.process_file = held\n"
        "sys.argv = ['nseg-infer', *sys.argv[3:]]\n"
        "cli.app()\n")
    proc = subprocess.Popen([sys.executable, "-c", hook, str(in_hand), str(go), "watch", str(src), "--out", str(out),
                             "--model", str(unet_bundle), "--settle", "1.0", "--poll", "0.2", "--fail-after", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        data = (tmp_path / "big.png").read_bytes()
        cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
        with open(src / "big.png", "wb") as f:
            for k in range(len(cuts) - 2):
                f.write(data[cuts[k]:cuts[k + 1]])
                f.flush()
                # A copy stalled mid-file: a file that lands after it and gets done proves the watcher
                # has seen the partial one unchanged for longer than the settle interval.
                (src / f"after{k}.png").write_bytes(png(seed=k))
                wait_for(is_done(out, f"after{k}.png"))
                assert not (out / "big.labels.tif").exists()
                assert "big.png" not in current_if_ready(out)
            f.write(data[cuts[-2]:])
        wait_for(lambda: (out / "big.geojson").exists() and current_if_ready(out).get("big.png"))
        wait_for(lambda: current(out)["big.png"].state == "done")
        row = current(out)["big.png"]
        assert row.n_nuclei == expected.n_nuclei and row.attempts == 1
        assert np.array_equal(tifffile.imread(out / "big.labels.tif"), tifffile.imread(ref / "big.labels.tif"))
        assert (out / "big.csv").read_text() == (ref / "big.csv").read_text()

        # SIGTERM while a file is in hand: it is finished and committed, then exit 0.
        (src / "large.png").write_bytes(png((512, 512), 150, seed=4))
        wait_for(in_hand.exists)
        assert current(out)["large.png"].state == "running"
        proc.send_signal(signal.SIGTERM)
        # The handler has run (it logs) before the file is let go: the stop is seen mid-file.
        wait_for(lambda: "finishing the file in hand" in (out / LOG_NAME).read_text())
        assert not (out / "large.labels.tif").exists()
        go.touch()
        text, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    row = current(out)["large.png"]
    assert row.state == "done" and row.attempts == 1 and row.n_nuclei > 0, text
    assert (out / "large.labels.tif").is_file() and not temp_files(out)
    log_text = (out / LOG_NAME).read_text()
    assert log_text.index("finishing the file in hand") < log_text.index("done large.png")


def test_kill9_mid_batch_then_restart(unet_bundle, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    names = [f"s{i:02d}.png" for i in range(60)] + ["L1.png", "L2.png"]
    for i, n in enumerate(names[:60]):
        (src / n).write_bytes(png(seed=i % 5))
    for n in names[60:]:
        (src / n).write_bytes(png((640, 640), 250, seed=len(n)))
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    proc = start("watch", src, "--out", out, "--model", unet_bundle, "--batch", "8", *FAST)
    try:
        def mid_batch():
            cur = current_if_ready(out)
            done = [n for n, r in cur.items() if r.state == "done"]
            running = [n for n, r in cur.items() if r.state == "running"]
            return cur if len(done) >= 12 and running else None

        before = wait_for(mid_batch, step=0.01)
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done_before = {n: r.finished for n, r in current(out).items() if r.state == "done"}
    assert len(done_before) >= len([n for n, r in before.items() if r.state == "done"])
    assert len(done_before) < len(names)
    r = cli("watch", src, "--out", out, "--model", unet_bundle, "--once", *FAST)
    assert r.returncode == 0, r.stderr
    assert "recovered from an interrupted run" in r.stderr or not any(
        x.state == "running" for x in before.values())
    cur = current(out)
    assert set(cur) == {*names, "bad.png"} and len(rows(out)) == len(names) + 1  # one row per input
    assert cur["bad.png"].state == "failed"
    for n in names:
        assert cur[n].state == "done", (n, cur[n])
        if n in done_before:  # nothing done is redone
            assert cur[n].finished == done_before[n] and cur[n].attempts == 1
        stem = n[:-4]
        for suffix in (".labels.tif", ".csv", ".overlay.png", ".geojson"):
            assert (out / f"{stem}{suffix}").stat().st_size > 0
    assert tifffile.imread(out / "L1.labels.tif").shape == (640, 640)
    assert not temp_files(out)
    events = log_events(out)
    assert max(events.values()) == 1  # no input was logged done (or failed) twice


@pytest.mark.parametrize("args", [["--pattern", "*.tif", "--recursive"]])
def test_pattern_recursive_and_outputs_inside_input(unet_bundle, tmp_path, args):
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    img = synthetic_blobs((80, 72), 5, seed=2)[0]
    for d in ("a", "b"):
        tifffile.imwrite(src / d / "x.tif", img)
    (src / "a" / "y.png").write_bytes(png())
    out = src / "results"  # inside the watched folder: must not be watched itself
    r = cli("watch", src, "--out", out, "--model", unet_bundle, "--once", *args, *FAST)
    assert r.returncode == 0, r.stderr
    assert sorted(Path(x.path).relative_to(src).as_posix() for x in rows(out)) == ["a/x.tif", "b/x.tif"]
    assert (out / "a" / "x.labels.tif").is_file() and (out / "b" / "x.labels.tif").is_file()
    r = cli("watch", src, "--out", out, "--model", unet_bundle, "--once", *args, *FAST)
    assert r.returncode == 0 and len(rows(out)) == 2


def test_watch_takes_the_run_options_for_channels_scale_and_products(tmp_path):
    """A watched folder of multichannel OME-TIFFs: the nuclear channel is chosen, the pixel size
    reaches the CSV, and only the requested products are written."""
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    img = synthetic_blobs((96, 96), 5, seed=2)[0]
    nuclei = img if img.ndim == 2 else img[..., 0]
    stack = np.stack([np.zeros_like(nuclei), nuclei])  # CYX: the nuclei are in channel 1
    tifffile.imwrite(inbox / "cells.ome.tif", stack, ome=True, metadata={"axes": "CYX"})
    r = cli("watch", inbox, "--out", out, "--once", *FAST, "--channel", "1", "--pixel-size", "0.5",
            "--products", "labels,csv,rois")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("cells")) == [
        "cells.csv", "cells.labels.tif", "cells.rois.zip"]
    header = (out / "cells.csv").read_text().splitlines()[0].split(",")
    assert "area_um2" in header
    assert tifffile.imread(out / "cells.labels.tif").max() >= 4
    bad = cli("watch", inbox, "--out", tmp_path / "o2", "--once", "--channels", "0,1,2,3")
    assert bad.returncode == 2 and "channels" in (bad.stdout + bad.stderr)
