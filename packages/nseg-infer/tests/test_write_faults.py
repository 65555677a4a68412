"""`nseg-infer run` and `watch` when the output disk fills up, turns read-only or its folder is
deleted, during writing. A real size-limited tmpfs where the machine allows it (root); the same
faults injected at the one atomic writer (`nseg_data.atomic._publish`) and at the ledger
everywhere. No timing asserts: every wait is for a state, with a generous timeout."""

from __future__ import annotations

import collections
import errno
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import imagecodecs
import pytest
import tifffile
from infer_testkit import synthetic_blobs
from nseg_data import atomic
from nseg_data.atomic import TEMP_RE
from typer.testing import CliRunner

from nseg_infer.engine.predictor import Predictor, RunConfig
from nseg_infer.runners.cli import app
from nseg_infer.runners.watch import ledger as ledger_mod
from nseg_infer.runners.watch.config import WatchConfig
from nseg_infer.runners.watch.ledger import LEDGER_NAME, Ledger
from nseg_infer.runners.watch.watcher import Watcher

FAST = ["--settle", "0.2", "--fail-after", "0.4", "--poll", "0.1"]
DONE_RE = re.compile(r" (done|failed) (\S+) ")


def png(seed: int, shape=(64, 64)) -> bytes:
    return imagecodecs.png_encode(synthetic_blobs(shape, 4, seed=seed)[0])


def wait_for(cond, timeout: float = 90.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"{what}: not met in {timeout} s")


def current(out: Path) -> dict:
    try:
        with Ledger(out / LEDGER_NAME, create=False) as led:
            return {Path(r.path).name: r for r in led.current()}
    except (FileNotFoundError, sqlite3.OperationalError):
        return {}


def all_done(out: Path, names) -> bool:
    cur = current(out)
    return all(n in cur and cur[n].state == "done" for n in names)


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_RE.match(p.name)]


def check_products(out: Path, names) -> None:
    """Every product under its final name is complete: it parses."""
    for n in names:
        stem = Path(n).stem
        assert tifffile.imread(out / f"{stem}.labels.tif").shape == (64, 64)
        assert (out / f"{stem}.csv").read_text().count("\n") >= 2
        json.loads((out / f"{stem}.geojson").read_text())
        assert imagecodecs.png_decode((out / f"{stem}.overlay.png").read_bytes()).shape[:2] == (64, 64)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte with a ballast file (unbuffered: nothing left to flush)."""
    ballast = disk / "ballast.bin"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 512):
            try:
                while True:
                    os.write(fd, b"\1" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast


@pytest.fixture()
def small_disk(tmp_path):
    """A 3 MiB tmpfs: a real full disk. Unmounted at the end, also when the test fails."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield d
    subprocess.run(["mount", "-o", "remount,rw", str(d)], capture_output=True)
    if subprocess.run(["umount", str(d)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture()
def inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    return d


# -- run ---------------------------------------------------------------------------------------------


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nseg_infer.runners.cli", "run", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_run_on_a_full_disk_exits_nonzero_naming_what_was_not_written(unet_bundle, inputs, small_disk):
    for i in range(3):
        (inputs / f"im{i}.png").write_bytes(png(i))
    out = small_disk / "out"
    out.mkdir()
    ballast = fill(small_disk)
    r = run_cli(inputs, "--out", out, "--model", unet_bundle, "--device", "cpu")
    assert r.returncode == 1, r.stderr
    assert "0 of 3 images segmented" in r.stdout
    assert "not written: No space left on device (ENOSPC)" in r.stderr
    for i in range(3):
        assert f"{inputs / f'im{i}.png'}: " in r.stderr  # each input named with what was not written
    assert "summary.csv: not written" in r.stderr
    assert os.listdir(out) == []  # nothing partial, no temp files
    ballast.unlink()
    r = run_cli(inputs, "--out", out, "--model", unet_bundle, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    check_products(out, [f"im{i}.png" for i in range(3)])


def test_run_into_a_read_only_folder(unet_bundle, inputs, small_disk):
    (inputs / "a.png").write_bytes(png(1))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    r = run_cli(inputs, "--out", small_disk / "out", "--model", unet_bundle, "--device", "cpu")
    assert r.returncode == 1
    assert "Read-only file system (EROFS)" in r.stderr and str(inputs / "a.png") in r.stderr


def test_run_with_a_write_fault_midway_publishes_only_complete_products(unet_bundle, inputs, tmp_path, monkeypatch):
    for i in range(3):
        (inputs / f"im{i}.png").write_bytes(png(i))
    real = atomic._publish

    def publish(tmp, target):  # the disk "fills up" when im1's CSV is published
        if target.name == "im1.csv":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(tmp, target)

    monkeypatch.setattr(atomic, "_publish", publish)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["run", str(inputs), "--out", str(out), "--model", str(unet_bundle),
                                   "--device", "cpu"])
    assert res.exit_code == 1
    assert f"{inputs / 'im1.png'}: {out / 'im1.csv'}: not written: No space left on device (ENOSPC)" in res.output
    assert "1 of them failed because their outputs could not be written" in res.output
    check_products(out, ["im0.png", "im2.png"])
    assert not (out / "im1.csv").exists() and not temp_files(out)
    rows = {r["input"]: r for r in __import__("csv").DictReader((out / "summary.csv").open())}
    assert rows[str(inputs / "im1.png")]["status"] == "error"


# -- watch, in process with injected faults (runs everywhere) ----------------------------------------


class Injected:
    """Turns write faults on and off at the atomic writer and the ledger's commits."""

    def __init__(self, monkeypatch) -> None:
        self.publish_errno: int | None = None
        self.ledger_full = False
        real_publish, real_finish = atomic._publish, ledger_mod.Ledger.finish
        outer = self

        def publish(tmp, target):
            if outer.publish_errno is not None:
                raise OSError(outer.publish_errno, os.strerror(outer.publish_errno))
            real_publish(tmp, target)

        def finish(self, *a, **k):
            if outer.ledger_full:
                raise sqlite3.OperationalError("database or disk is full")
            return real_finish(self, *a, **k)

        monkeypatch.setattr(atomic, "_publish", publish)
        monkeypatch.setattr(ledger_mod.Ledger, "finish", finish)


def watch_in_process(predictor, inputs, out, control) -> tuple[Watcher, list]:
    """Run a Watcher in this (main) thread while `control(watcher)` drives it from another."""
    w = Watcher(predictor, WatchConfig(inputs, out, settle=0.2, fail_after=0.4, poll=0.1, events=False,
                                       retry_min=0.05, retry_max=0.2))
    errors: list = []

    def drive():
        try:
            control(w)
        except BaseException as e:
            errors.append(e)
        finally:
            w.stop.set()
            w.wake.set()

    t = threading.Thread(target=drive, daemon=True)
    t.start()
    assert w.run() == 0
    t.join(timeout=30)
    if errors:
        raise errors[0]
    return w, errors


@pytest.fixture(scope="module")
def predictor(unet_bundle):
    return Predictor(unet_bundle, RunConfig(device="cpu"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_watch_pauses_on_an_output_fault_and_resumes_when_writable(predictor, inputs, tmp_path, monkeypatch, code):
    fault = Injected(monkeypatch)
    out = tmp_path / "out"
    names = [f"im{i}.png" for i in range(4)]
    seen = {}

    def control(w):
        fault.publish_errno = code
        for i, n in enumerate(names):
            (inputs / n).write_bytes(png(i))
        wait_for(lambda: w.guard.paused_since is not None, what="pause")
        # Recorded failed with the OS reason while paused; nothing done, nothing half-written.
        wait_for(lambda: any(r.state == "failed" for r in current(out).values()), what="failure recorded")
        seen["failed"] = [r for r in current(out).values() if r.state == "failed"]
        # Published products only: a hidden temp file may be in the middle of being written.
        seen["files"] = sorted(p.name for p in out.iterdir()
                               if p.suffix in (".tif", ".csv", ".png", ".geojson") and not p.name.startswith("."))
        fault.publish_errno = None
        wait_for(lambda: all_done(out, names), what="all done")

    w, _ = watch_in_process(predictor, inputs, out, control)
    reason = os.strerror(code)
    assert seen["failed"] and all(reason in r.error and r.output_fault for r in seen["failed"])
    assert seen["files"] == [] and not temp_files(out)
    cur = current(out)
    assert all(cur[n].state == "done" and not cur[n].output_fault for n in names)
    assert w.guard.pauses >= 1 and not w.guard.held
    check_products(out, names)
    log = (out / "watch.log").read_text()
    done = collections.Counter(m.group(2) for m in DONE_RE.finditer(log) if m.group(1) == "done")
    assert done == dict.fromkeys(names, 1)  # each done exactly once
    assert "processing paused" in log and "writable again" in log


def test_watch_survives_a_ledger_commit_that_finds_the_disk_full(predictor, inputs, tmp_path, monkeypatch):
    fault = Injected(monkeypatch)
    out = tmp_path / "out"

    def control(w):
        fault.ledger_full = True
        (inputs / "a.png").write_bytes(png(3))
        wait_for(lambda: w.guard.paused_since is not None, what="pause")
        assert current(out)["a.png"].state == "running"  # the commit failed: the row kept its state
        fault.ledger_full = False
        wait_for(lambda: all_done(out, ["a.png"]), what="done")

    watch_in_process(predictor, inputs, out, control)
    row = current(out)["a.png"]
    assert row.state == "done" and row.attempts == 1  # the held try is not counted as a crash
    assert "database or disk is full" in (out / "watch.log").read_text()


def test_output_faults_left_at_a_stop_are_retried_at_the_next_start(predictor, inputs, tmp_path, monkeypatch):
    fault = Injected(monkeypatch)
    out = tmp_path / "out"

    def control(w):
        fault.publish_errno = errno.ENOSPC
        (inputs / "a.png").write_bytes(png(4))
        wait_for(lambda: current(out).get("a.png") is not None and current(out)["a.png"].state == "failed",
                 what="failed")

    watch_in_process(predictor, inputs, out, control)
    assert current(out)["a.png"].output_fault
    fault.publish_errno = None
    watch_in_process(predictor, inputs, out, lambda w: wait_for(lambda: all_done(out, ["a.png"]), what="retried"))


def test_ledger_requeue_and_rollback_after_a_failed_commit(tmp_path):
    with Ledger(tmp_path / LEDGER_NAME) as led:
        row = led.observe("/in/a.png", 10, 1, "x")
        led.claim([row.id])
        led.finish(row.id, error="/in/a.png: /o/a.csv: not written: No space left on device", output_fault=True)
        assert led.output_faults() == [row.id] and led.get(row.id).state == "failed"
        assert led.requeue([row.id]) == 1 and led.get(row.id).state == "pending"
        assert led.get(row.id).attempts == 0 and not led.get(row.id).output_fault
        # A transaction whose commit fails leaves no open transaction behind.
        with pytest.raises(sqlite3.Error), led.transaction() as db:
            db.execute("UPDATE files SET state = 'done' WHERE id = ?", (row.id,))
            db.execute("SELECT * FROM no_such_table")
        assert not led.db.in_transaction and led.get(row.id).state == "pending"
        led.claim([row.id])  # a new transaction works


# -- watch as a subprocess on a real small disk -----------------------------------------------------------


def start_watch(bundle, inputs, out, log_file) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nseg_infer.runners.cli", "watch", str(inputs), "--out", str(out),
                             "--model", str(bundle), "--device", "cpu", "--no-events", *FAST],
                            stdout=log_file, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_watch_on_a_real_small_disk(unet_bundle, inputs, small_disk, tmp_path, fault):
    out = small_disk / "out"
    log_path = tmp_path / "watch.stderr"
    names = [f"im{i}.png" for i in range(4)]
    with open(log_path, "w") as log_file:
        proc = start_watch(unet_bundle, inputs, out, log_file)
        try:
            (inputs / "first.png").write_bytes(png(9))
            wait_for(lambda: all_done(out, ["first.png"]), what="first file")
            if fault == "full":
                ballast = fill(small_disk)
            else:  # OUT turns read-only: a read-only bind mount over it (files the watcher holds open stay
                # writable, as on a share whose permissions change; every new file is refused)
                subprocess.run(["mount", "--bind", str(out), str(out)], check=True)
                subprocess.run(["mount", "-o", "remount,bind,ro", str(out)], check=True)
            for i, n in enumerate(names):
                (inputs / n).write_bytes(png(i))
            wait_for(lambda: "is not writable" in log_path.read_text(), what="pause")
            assert proc.poll() is None  # still watching
            if fault == "full":
                ballast.unlink()
            else:
                subprocess.run(["umount", str(out)], check=True)
            wait_for(lambda: all_done(out, names), what="all done after the fault")
        finally:
            code = stop(proc)
            while subprocess.run(["mountpoint", "-q", str(out)]).returncode == 0:
                subprocess.run(["umount", "-l", str(out)], check=True)
    text = log_path.read_text()
    assert code == 0, text
    assert ("No space left on device" if fault == "full" else "Read-only file system") in text
    assert "writable again" in text and "Traceback" not in text
    assert text.count("cannot write") <= 3  # a failing watch.log is reported once per episode, not per line
    check_products(out, ["first.png", *names])
    assert not temp_files(out)
    done = collections.Counter(m.group(2) for m in DONE_RE.finditer(text) if m.group(1) == "done")
    assert done == dict.fromkeys(["first.png", *names], 1)


def test_watch_rebuilds_a_deleted_output_folder(unet_bundle, inputs, tmp_path):
    out = tmp_path / "out"
    log_path = tmp_path / "watch.stderr"
    with open(log_path, "w") as log_file:
        proc = start_watch(unet_bundle, inputs, out, log_file)
        try:
            (inputs / "a.png").write_bytes(png(1))
            wait_for(lambda: all_done(out, ["a.png"]), what="a done")
            shutil.rmtree(out)
            (inputs / "b.png").write_bytes(png(2))
            wait_for(lambda: all_done(out, ["b.png"]), what="b done in the recreated folder")
            assert proc.poll() is None
        finally:
            code = stop(proc)
    text = log_path.read_text()
    assert code == 0, text
    cur = current(out)
    # The ledger came back with its history; a's outputs went with the folder, so it says so.
    assert cur["a.png"].state == "failed" and "outputs deleted" in cur["a.png"].error
    assert cur["b.png"].state == "done"
    check_products(out, ["b.png"])
    assert "was deleted while watching" in text and "Traceback" not in text


# -- ledger growth -----------------------------------------------------------------------------------


def test_compact_drops_history_and_old_records_of_vanished_inputs(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "kept.png").write_bytes(b"x")
    with Ledger(tmp_path / LEDGER_NAME) as led:
        ids = {}
        for name, sha in [("kept.png", "a"), ("gone.png", "b"), ("changed.png", "c1"), ("changed.png", "c2")]:
            row = led.observe(str(inp / name), 1, len(ids), sha)
            led.claim([row.id])
            led.finish(row.id, error=None)
            ids[name, sha] = row.id
        assert led.counts()["superseded"] == 1
        old = time.time() + 10 * 86400  # "now" ten days on: every record is older than a week
        n, _ = led.compact(older_than=7 * 86400, now=old)
        left = {Path(r.path).name for r in led.rows()}
    # The superseded version and the record of an input no longer there went; the rest stayed.
    assert n == 3 and left == {"kept.png"}


def test_status_compact_on_the_command_line(tmp_path):
    with Ledger(tmp_path / LEDGER_NAME) as led:
        for sha in ("v1", "v2"):
            row = led.observe("/in/a.png", 1, 1 if sha == "v1" else 2, sha)
            led.claim([row.id])
            led.finish(row.id, error="/in/a.png: /o/a.csv: not written: No space left on device",
                       output_fault=sha == "v2")
    res = CliRunner().invoke(app, ["status", str(tmp_path), "--compact"])
    assert res.exit_code == 0, res.output
    assert "1 records deleted" in res.output and "1 inputs: 0 done, 1 failed" in res.output
    assert "1 of the failed could not write their outputs" in res.output
    with Ledger(tmp_path / LEDGER_NAME, create=False) as led:
        assert len(led.rows()) == 1
    res = CliRunner().invoke(app, ["status", str(tmp_path), "--older-than", "3"])
    assert res.exit_code != 0


def test_once_that_cannot_write_its_outputs_exits_1(predictor, inputs, tmp_path, monkeypatch):
    Injected(monkeypatch).publish_errno = errno.ENOSPC
    (inputs / "a.png").write_bytes(png(5))
    out = tmp_path / "out"
    w = Watcher(predictor, WatchConfig(inputs, out, settle=0.2, fail_after=0.4, poll=0.1, events=False, once=True,
                                       retry_min=0.05, retry_max=0.1))
    assert w.run() == 1
    row = current(out)["a.png"]
    assert row.state == "failed" and row.output_fault and "No space left on device" in row.error


def test_ledgers_from_before_output_faults_are_read_and_upgraded(tmp_path):
    from nseg_infer.runners.watch.ledger import SCHEMA, _statements
    from nseg_infer.runners.watch.report import status_report

    old = SCHEMA.replace("    output_fault INTEGER NOT NULL DEFAULT 0,\n", "")
    assert old != SCHEMA
    con = sqlite3.connect(tmp_path / LEDGER_NAME)
    for statement in _statements(old):
        con.execute(statement)
    con.execute("INSERT INTO files (path, size, mtime_ns, sha256, state, created) VALUES ('/in/a.png', 1, 1, 'x', "
                "'done', 1)")
    con.commit()
    con.close()
    assert "1 inputs: 1 done" in status_report(tmp_path)  # read-only: no upgrade needed
    with Ledger(tmp_path / LEDGER_NAME) as led:  # a watcher's open adds the column
        assert led.rows()[0].state == "done" and led.output_faults() == []
        cols = {r[1] for r in led.db.execute("PRAGMA table_info(files)")}
    assert "output_fault" in cols


def test_a_file_whose_outputs_keep_failing_while_out_is_writable_is_failed_for_good(predictor, inputs, tmp_path,
                                                                                     monkeypatch):
    from nseg_infer.runners.watch.guard import MAX_HOLDS

    real = atomic._publish

    def publish(tmp, target):  # only this file's CSV is refused, every time; probes and others succeed
        if target.name == "stuck.csv":
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        real(tmp, target)

    monkeypatch.setattr(atomic, "_publish", publish)
    out = tmp_path / "out"
    (inputs / "stuck.png").write_bytes(png(6))
    (inputs / "fine.png").write_bytes(png(7))
    w = Watcher(predictor, WatchConfig(inputs, out, settle=0.2, fail_after=0.4, poll=0.1, events=False, once=True,
                                       retry_min=0.01, retry_max=0.02))
    assert w.run() == 0
    cur = current(out)
    assert cur["fine.png"].state == "done"
    stuck = cur["stuck.png"]
    assert stuck.state == "failed" and not stuck.output_fault and f"after {MAX_HOLDS} tries" in stuck.error
    assert os.strerror(errno.EFBIG) in stuck.error and not w.guard.held
