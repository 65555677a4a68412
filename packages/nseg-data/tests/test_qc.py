"""QC finds each problem on synthetic labels, and each fix removes it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nseg_data import qc
from nseg_data.sample import Modality, Sample


def make_sample(labels: np.ndarray, image: np.ndarray | None = None, meta: dict | None = None) -> Sample:
    if image is None:
        gray = np.where(labels > 0, 200, 10).astype(np.uint8)
        image = np.dstack([gray] * 3)
    return Sample("s", image, labels.astype(np.uint32), Modality.FLUORESCENCE, "synthetic", meta or {})


def kinds(s: Sample, params=qc.QCParams()) -> dict[str, int]:
    return qc.check_sample(s, params).counts()


def clean() -> np.ndarray:
    lab = np.zeros((40, 40), np.uint32)
    lab[5:15, 5:15] = 1
    lab[20:30, 20:32] = 2
    return lab


def test_clean_labels_have_no_issues():
    assert sum(kinds(make_sample(clean())).values()) == 0


def test_components_detected_and_split():
    lab = clean()
    lab[35:38, 35:38] = 1  # a second piece of nucleus 1
    s = make_sample(lab)
    assert kinds(s)["components"] == 1
    fixed = qc.apply_fixes(s, ["split-components"])
    assert kinds(fixed)["components"] == 0
    assert fixed.n_nuclei == 3


def test_holes_detected_and_filled():
    lab = clean()
    lab[9:11, 9:11] = 0
    s = make_sample(lab)
    assert kinds(s)["holes"] == 1
    fixed = qc.apply_fixes(s, ["fill-holes"])
    assert kinds(fixed)["holes"] == 0
    assert (fixed.labels[9:11, 9:11] == 1).all()


def test_tiny_detected_and_dropped():
    lab = clean()
    lab[35:37, 2:4] = 3  # 4 px
    s = make_sample(lab)
    assert kinds(s)["tiny"] == 1
    fixed = qc.apply_fixes(s, ["drop-tiny"])
    assert kinds(fixed)["tiny"] == 0 and fixed.n_nuclei == 2
    assert kinds(s, qc.QCParams(min_area=3))["tiny"] == 0


def test_mask_on_background_detected():
    lab = clean()
    gray = np.full((40, 40), 10, np.uint8)
    gray[5:15, 5:15] = 200  # only nucleus 1 is visible
    s = make_sample(lab, np.dstack([gray] * 3))
    q = qc.check_sample(s)
    assert [(i.kind, i.label) for i in q.issues] == [("no_contrast", 2)]


def test_overlap_and_empty_reported_from_reader_meta():
    meta = {"overlap_pixels": 12, "overlapping_masks": ["m1.png", "m2.png"], "empty_masks": ["m9.png"]}
    c = kinds(make_sample(clean(), meta=meta))
    assert c["overlap"] == 1 and c["empty"] == 1


def test_report_and_gallery(tmp_path):
    good = make_sample(clean())
    lab = clean()
    lab[9:11, 9:11] = 0
    bad = Sample("bad", good.image, lab, Modality.FLUORESCENCE, "synthetic", {})
    report = qc.check_samples([good, bad])
    assert [s.id for s in report.worst(5)] == ["bad"]
    qc.write_report(tmp_path / "qc.json", report)
    d = json.loads((tmp_path / "qc.json").read_text())
    assert d["counts"]["holes"] == 1 and d["samples"][0]["id"] == "bad"
    n = qc.write_gallery(tmp_path / "g.png", report, {"s": good, "bad": bad}, n=4, size=64)
    assert n == 1
    assert Image.open(tmp_path / "g.png").size == (64, 64 + 28)


def test_unknown_fix_rejected():
    with pytest.raises(ValueError, match="unknown fix"):
        qc.apply_fixes(make_sample(clean()), ["polish"])
