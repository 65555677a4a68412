"""The Fine-tune widget's training process never outlives napari: it is stopped when napari's
process quits normally (atexit) and, on Linux, when it is killed (the parent-death signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Stands in for `nseg-train adapt`: reports its pid, then works for ten minutes.
CHILD = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"

# Stands in for napari: runs the child through the widget's `_run` in a worker thread, prints the
# child's pid once it is up, then quits normally when told to (a line on stdin) or waits to be killed.
PARENT = f"""
import sys, threading
from nseg_infer.runners.napari_finetune import _run
up = threading.Event()
pid = []
def line(s):
    pid.append(s.strip()); up.set()
threading.Thread(target=_run, args=([sys.executable, "-c", {CHILD!r}], line, threading.Event()), daemon=True).start()
up.wait(60)
print(pid[0], flush=True)
if sys.argv[1] == "wait":
    threading.Event().wait()
sys.stdin.readline()
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be collected


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return not alive(pid)


def start_parent(mode: str) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(p)) for p in sys.path if p]))
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    child = int(parent.stdout.readline())
    assert alive(child)
    return parent, child


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")


def test_the_training_process_ends_when_napari_quits():
    parent, child = start_parent("quit")
    try:
        parent.communicate("quit\n", timeout=60)
        assert parent.returncode == 0
        assert gone_within(child, 30), f"training process {child} outlived napari's"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_training_process_ends_when_napari_is_killed():
    parent, child = start_parent("wait")
    try:
        parent.kill()
        parent.wait(60)
        assert gone_within(child, 30), f"training process {child} outlived napari's"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
