#!/usr/bin/env python
"""Folder-watch soak: does a long `nseg-infer watch` stay flat?

Streams `--images` small images (default 5,000 of 64 x 64) into a watched folder as fast as the
watcher takes them (at most `--backlog` files written and not yet done), then `--more` (default
1,000) across a restart: the watcher is stopped with SIGTERM, half of them land while it is down,
a new watcher starts and the rest stream in. A real `nseg-infer watch` subprocess; each image is
written under a hidden name and renamed, as copy tools do, and every image differs (its index is
stamped into its pixels), so none is skipped as a duplicate.

Reports images/s, the watcher's resident memory (RSS, sampled every 0.5 s from /proc) after the
warm-up against the end, the ledger's size per 1,000 images, the watcher's open file descriptors,
and checks that every image was done exactly once (the ledger: one done row per image, one attempt;
watch.log: one "done" line per image) and that its products exist. The figures replace the
"## Folder watch soak" section of docs/benchmarks.md.

    .venv/bin/python tools/soak_watch.py                          # default model, 5,000 + 1,000 images
    .venv/bin/python tools/soak_watch.py --images 500 --more 100 --no-write
    .venv/bin/python tools/soak_watch.py --pause-training         # SIGSTOP a running `nseg-train unet` meanwhile
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "packages" / "nseg-infer" / "tests"))
SECTION = "## Folder watch soak"
WARMUP = 500  # images before the memory baseline: imports, the model session, first allocations
DONE_RE = re.compile(r" done (\S+) ")


def make_pool(side: int, n: int = 64) -> list[np.ndarray]:
    from infer_testkit import synthetic_blobs

    return [synthetic_blobs((side, side), max(3, side * side // 1200), seed=s)[0] for s in range(n)]


def image_bytes(pool: list[np.ndarray], i: int) -> bytes:
    import imagecodecs

    img = pool[i % len(pool)].copy()
    # The index in the first pixels: every file has its own content (and sha256).
    img.reshape(-1)[:4] = np.frombuffer(int(i).to_bytes(4, "little"), np.uint8)
    return imagecodecs.png_encode(img)


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def ledger_bytes(out: Path) -> int:
    from nseg_infer.runners.watch.ledger import LEDGER_NAME

    return sum(p.stat().st_size for p in out.glob(LEDGER_NAME + "*") if p.is_file())


@dataclass
class Watch:
    """One watcher process and its samples (seconds, images done, RSS MB, open fds)."""

    proc: subprocess.Popen
    samples: list[tuple[float, int, float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


class Soak:
    def __init__(self, a: argparse.Namespace, work: Path) -> None:
        self.a = a
        self.inp, self.out = work / "in", work / "out"
        self.inp.mkdir(parents=True)
        self.pool = make_pool(a.side)
        self.written = 0
        self.t0 = time.monotonic()

    def done(self) -> int:
        from nseg_infer.runners.watch.ledger import LEDGER_NAME

        try:
            con = sqlite3.connect(f"file:{self.out / LEDGER_NAME}?mode=ro", uri=True, timeout=5)
            try:
                return con.execute("SELECT COUNT(*) FROM files WHERE current = 1 AND state IN ('done', 'failed')"
                                   ).fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            return 0

    def start(self) -> Watch:
        cmd = [sys.executable, "-m", "nseg_infer.runners.cli", "watch", str(self.inp), "--out", str(self.out),
               "--device", "cpu", "--settle", str(self.a.settle), "--poll", str(self.a.poll)]
        if self.a.model:
            cmd += ["--model", self.a.model]
        w = Watch(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        threading.Thread(target=self._sample, args=(w,), daemon=True).start()
        return w

    def _sample(self, w: Watch) -> None:
        while not w.stop.is_set() and w.proc.poll() is None:
            r, f = rss_mb(w.proc.pid), open_fds(w.proc.pid)
            if r is not None and f is not None:
                w.samples.append((time.monotonic() - self.t0, self.done(), r, f))
            w.stop.wait(0.5)

    def write(self, i: int) -> None:
        tmp = self.inp / f".img{i:06d}.png.part"
        tmp.write_bytes(image_bytes(self.pool, i))
        os.replace(tmp, self.inp / f"img{i:06d}.png")
        self.written += 1

    def stream(self, upto: int, w: Watch | None, timeout: float) -> None:
        """Write images until `upto` are written, keeping at most `backlog` not yet done; with
        a watcher, then wait until all are done."""
        end = time.monotonic() + timeout
        while self.written < upto:
            if w is not None and self.written - self.done() >= self.a.backlog:
                self._alive(w)
                if time.monotonic() > end:
                    raise TimeoutError(f"{self.done()} of {self.written} done after {timeout} s")
                time.sleep(0.01)
                continue
            self.write(self.written)
        while w is not None and self.done() < upto:
            self._alive(w)
            if time.monotonic() > end:
                raise TimeoutError(f"{self.done()} of {upto} done after {timeout} s")
            time.sleep(0.05)

    @staticmethod
    def _alive(w: Watch) -> None:
        if w.proc.poll() is not None:
            raise RuntimeError(f"the watcher exited with {w.proc.returncode}")

    @staticmethod
    def halt(w: Watch) -> int:
        w.proc.send_signal(signal.SIGTERM)
        try:
            code = w.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            code = w.proc.wait()
        w.stop.set()
        return code


def verify(out: Path, inp: Path, n: int) -> dict:
    """0 lost, 0 twice: one done row per image with one attempt, one "done" log line per image,
    every product present."""
    from nseg_infer.runners.watch.ledger import LEDGER_NAME, Ledger

    with Ledger(out / LEDGER_NAME, create=False) as led:
        rows = led.rows()
    names = {f"img{i:06d}.png" for i in range(n)}
    done = collections.Counter(Path(r.path).name for r in rows if r.state == "done")
    lines = collections.Counter(DONE_RE.findall((out / "watch.log").read_text()))
    products = sum(all((out / f"{Path(m).stem}{s}").is_file() for s in (".labels.tif", ".csv", ".overlay.png",
                                                                         ".geojson")) for m in names)
    return {"rows": len(rows), "lost": len(names - set(done)), "twice_ledger": sum(v > 1 for v in done.values()),
            "retried": sum(r.attempts != 1 for r in rows), "failed": sum(r.state == "failed" for r in rows),
            "twice_log": sum(v > 1 for v in lines.values()), "logged": len(lines), "products": products}


def stopped_training() -> list[int]:
    r = subprocess.run(["pgrep", "-f", "nseg-train unet"], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split() if int(p) != os.getpid()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--more", type=int, default=1000, help="images streamed across a restart")
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--backlog", type=int, default=64, help="files written and not yet done, at most")
    ap.add_argument("--settle", type=float, default=0.3)
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--model", help="bundle (default: the packaged default UNet)")
    ap.add_argument("--work", help="folder for in/ and out/ (default: a temp folder, removed)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--pause-training", action="store_true",
                    help="SIGSTOP a running `nseg-train unet` for the soak, SIGCONT after (also on error)")
    ap.add_argument("--no-write", action="store_true", help="print the report only")
    a = ap.parse_args()

    from bench_infer import publish

    # SIGTERM (a timeout, a user) must still reach the `finally` that resumes a paused training.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    paused = stopped_training() if a.pause_training else []
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="nseg-soak-"))
    try:
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        load0 = os.getloadavg()[0]
        soak = Soak(a, work)
        w1 = soak.start()
        t_start = time.monotonic()
        soak.stream(a.images, w1, a.timeout)
        t_first = time.monotonic() - t_start
        fds1 = open_fds(w1.proc.pid)
        wal_at = ledger_bytes(soak.out)
        code1 = soak.halt(w1)
        ledger_at = ledger_bytes(soak.out)  # closed: the WAL checkpointed into the file
        half = a.images + a.more // 2
        soak.stream(half, None, a.timeout)  # land while no watcher runs
        w2 = soak.start()
        t2 = time.monotonic()
        soak.stream(a.images + a.more, w2, a.timeout)
        t_second = time.monotonic() - t2
        fds2 = open_fds(w2.proc.pid)
        code2 = soak.halt(w2)
        load1 = os.getloadavg()[0]
        check = verify(soak.out, soak.inp, a.images + a.more)
        ledger_end = ledger_bytes(soak.out)
    finally:
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)

    s = w1.samples
    after = [x for x in s if x[1] >= WARMUP]
    base = after[0] if after else s[0]
    peak = max(after or s, key=lambda x: x[2])
    end = s[-1]
    fd_series = [x[3] for x in after] or [x[3] for x in s]
    n_all = a.images + a.more
    rate1 = a.images / t_first
    rate2 = a.more / t_second if t_second else 0.0
    ok = (check["lost"] == 0 and check["twice_ledger"] == 0 and check["twice_log"] == 0 and check["retried"] == 0
          and check["products"] == n_all and code1 == 0 and code2 == 0)
    flat = peak[2] - base[2]
    per_k = ledger_end / n_all * 1000
    others = "other jobs of the machine ran meanwhile" if max(load0, load1) > 1.5 else "the machine was otherwise quiet"
    bg = f"a niced model training was paused (SIGSTOP) for the soak; {others}" if paused else others
    lines = [
        f"`tools/soak_watch.py` on {time.strftime('%Y-%m-%d')}: a real `nseg-infer watch --device cpu` "
        f"(settle {a.settle:g} s, poll {a.poll:g} s, filesystem events on) fed {a.images:,} images of "
        f"{a.side} x {a.side} px as fast as it took them (at most {a.backlog} written and not yet done), "
        f"then {a.more:,} more across a restart: SIGTERM, {a.more // 2:,} written while no watcher ran, a new "
        f"watcher, the rest streamed. Each image is written under a hidden name and renamed; all differ. "
        f"Model: {a.model or 'the packaged default UNet'}.",
        "",
        f"Machine: {os.cpu_count()}-core {platform.machine()} container, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, no GPU, Python "
        f"{platform.python_version()}; load average {load0:.1f} at the start and {load1:.1f} at the end ({bg}).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| images per second, first {a.images:,} (whole stream: discovery, settle, hashing, model, 4 products, "
        f"fsync, ledger) | {rate1:.1f} |",
        f"| images per second across the restart ({a.more:,} images from the new watcher's start, its "
        f"imports and model loading included) | {rate2:.1f} |",
        f"| watcher RSS after {WARMUP} images (warm-up) | {base[2]:.0f} MB |",
        f"| peak RSS from then to image {a.images:,} | {peak[2]:.0f} MB (at image {peak[1]:,}; "
        f"{flat:+.0f} MB over the warm-up value) |",
        f"| RSS at image {end[1]:,} (end of the first watcher) | {end[2]:.0f} MB ({end[2] - base[2]:+.0f} MB) |",
        f"| ledger file | {ledger_at / 1e6:.2f} MB at {a.images:,} images, {ledger_end / 1e6:.2f} MB at "
        f"{n_all:,}: {per_k / 1e3:.0f} kB per 1,000 images (while running, "
        f"{wal_at / 1e6:.2f} MB with its write-ahead log, which SQLite folds back into the file every 1,000 "
        "pages, so the log stays near 4 MB) |",
        f"| open file descriptors | {min(fd_series)} to {max(fd_series)} after the warm-up; {fds1} at image "
        f"{a.images:,}; {fds2} at the end of the second watcher |",
        f"| lost / processed twice | {check['lost']} / {max(check['twice_ledger'], check['twice_log'])} "
        f"({check['rows']:,} ledger rows, {check['logged']:,} images logged done once each, "
        f"{check['retried']} rows with more than one attempt, {check['products']:,} complete product sets) |",
        "",
        ("RSS stays flat within 50 MB after the warm-up." if flat <= 50 and end[2] - base[2] <= 50 else
         f"RSS grows by {max(flat, end[2] - base[2]):.0f} MB after the warm-up: NOT flat."),
        f"The ledger grows by one row per image (about {ledger_end / n_all:.0f} bytes each with path, "
        "hash and output names); `nseg-infer status OUT --compact` removes the history of changed files "
        "and, with `--older-than DAYS`, the records of finished inputs no longer in the watched folder.",
    ]
    rc = publish(SECTION, "\n".join(lines), write=not a.no_write and ok)
    if not ok:
        print(f"SOAK FAILED: {check}, exit codes {code1}, {code2}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
