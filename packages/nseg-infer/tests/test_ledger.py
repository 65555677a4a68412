"""The watcher's ledger, settle detection and temp-file cleanup, in-process (fast)."""

from __future__ import annotations

import shutil

import imagecodecs
import pytest
from infer_testkit import synthetic_blobs
from nseg_data.atomic import TEMP_RE, atomic_path, clean_temp_files

from nseg_infer.runners.watch.ledger import MAX_ATTEMPTS, Ledger
from nseg_infer.runners.watch.settle import FolderScanner


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as led:
        yield led


def test_versions_and_transitions(ledger):
    a = ledger.observe("/in/a.png", 10, 1, "h1")
    assert a.state == "pending" and a.current
    assert ledger.observe("/in/a.png", 10, 1, "h1").id == a.id  # seen again: same row
    assert ledger.claim([a.id, a.id]) == [a.id] and ledger.get(a.id).state == "running"
    assert ledger.claim([a.id]) == []  # nobody else can take a running row
    ledger.finish(a.id, error=None, n_nuclei=5, height=4, width=5, seconds=0.5, outputs=["/o/a.labels.tif"])
    done = ledger.get(a.id)
    assert done.state == "done" and done.n_nuclei == 5 and done.outputs == ("/o/a.labels.tif",)
    with pytest.raises(RuntimeError):
        ledger.finish(a.id, error=None)  # done is final: no second completion
    # A touch (new mtime, same content) keeps the row: nothing to redo.
    t = ledger.observe("/in/a.png", 10, 2, "h1")
    assert (t.id, t.state, t.mtime_ns) == (a.id, "done", 2)
    # New content is a new version, processed again; the old one stays as history.
    b = ledger.observe("/in/a.png", 12, 3, "h2")
    assert b.id != a.id and b.state == "pending"
    assert [r.id for r in ledger.current("/in/a.png")] == [b.id]
    assert ledger.counts() == {"pending": 1, "running": 0, "done": 0, "failed": 0, "superseded": 1}
    # Restoring the old content with its old stat revives that version instead of duplicating it.
    c = ledger.observe("/in/a.png", 10, 2, "h1")
    assert c.id == a.id and c.state == "pending" and len(ledger.rows("/in/a.png")) == 2


def test_recover_release_retry(ledger):
    ids = [ledger.observe(f"/in/{i}.png", 1, 1, str(i)).id for i in range(3)]
    ledger.claim(ids)
    ledger.release([ids[2]])
    assert ledger.get(ids[2]).state == "pending" and ledger.get(ids[2]).attempts == 0
    ledger.finish(ids[1], error="/in/1.png: corrupt")
    assert ledger.recover() == (1, 0)  # the crashed running row is pending again
    assert ledger.get(ids[0]).state == "pending"
    for _ in range(MAX_ATTEMPTS - 2):
        ledger.claim([ids[0]])
        ledger.recover()
    ledger.claim([ids[0]])
    assert ledger.recover() == (0, 1)  # an input that keeps killing the process is given up
    assert "interrupted 3 times" in ledger.get(ids[0]).error
    assert [r.id for r in ledger.latest_failures()] and ledger.counts()["failed"] == 2
    assert ledger.retry_failed() == 2 and ledger.counts()["pending"] == 3


def test_throughput(ledger):
    ids = [ledger.observe(f"/in/{i}.png", 1, 1, str(i)).id for i in range(4)]
    ledger.claim(ids)
    for i in ids[:3]:
        ledger.finish(i, error=None, n_nuclei=2, height=1000, width=1000, seconds=2.0)
    ledger.finish(ids[3], error="bad")
    tp = ledger.throughput(3600.0)
    assert (tp.files, tp.failed, tp.nuclei) == (3, 1, 6)
    assert tp.megapixels == pytest.approx(3.0) and tp.mpx_per_busy_second == pytest.approx(0.5)
    assert ledger.throughput(3600.0, now=ledger.get(ids[0]).finished + 7200).files == 0


def test_temp_names_match_the_runtime_writers(tmp_path):
    left = tmp_path / "left" / "sub"
    left.mkdir(parents=True)
    names = []
    # What a kill -9 inside the writers would leave: their temp names, kept by copying them away.
    with atomic_path(tmp_path / "x.labels.tif") as t1, atomic_path(tmp_path / "x.csv") as t2:
        for t in (t1, t2):
            shutil.copy(t, left / t.name)
            names.append(t.name)
    (left / ".nseg-canvas.ab_12cd3.tmp").write_bytes(b"")
    (left / ".rsync-partial.png").write_bytes(b"")  # somebody else's hidden file: kept
    assert all(TEMP_RE.match(n) for n in names)
    removed = clean_temp_files(tmp_path / "left")
    assert sorted(p.name for p in removed) == sorted([*names, ".nseg-canvas.ab_12cd3.tmp"])
    assert [p.name for p in left.iterdir()] == [".rsync-partial.png"]


def test_scanner_settles_and_excludes(tmp_path):
    src, out = tmp_path / "in", tmp_path / "in" / "out"
    out.mkdir(parents=True)
    png = imagecodecs.png_encode(synthetic_blobs((64, 64), 3)[0])
    for name in ("x.labels.tif", "x.overlay.png", ".hidden.png", "notes.txt"):
        (src / name).write_bytes(png)
    (out / "y.png").write_bytes(png)
    sc = FolderScanner(src, recursive=True, exclude=[out], settle=1.0, fail_after=5.0)
    f = src / "a.png"
    f.write_bytes(png[:100])
    assert sc.step(0.0) == [] and list(sc.settling) == [f]
    f.write_bytes(png[:200])
    assert sc.step(0.9) == []  # changed: the settle clock restarts
    assert sc.step(1.5) == []  # stable 0.6 s only
    assert sc.step(2.0) == []  # stable but truncated: waits for fail_after
    assert sc.next_deadline(2.0) == pytest.approx(5.9 - 2.0)
    f.write_bytes(png)
    assert sc.step(3.0) == []
    (r,) = sc.step(4.0)
    assert (r.path, r.shape, r.error, r.size) == (f, (64, 64), None, len(png))
    sc.mark_known(f, (r.size, r.mtime_ns))
    assert sc.step(10.0) == [] and not sc.settling
    g = src / "broken.png"
    g.write_bytes(png[:50])
    sc.step(11.0)
    (r,) = sc.step(16.5)  # stable and still undecodable after fail_after: handed on with its error
    assert r.shape is None and "broken.png" in r.error
