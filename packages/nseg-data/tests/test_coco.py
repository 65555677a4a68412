"""COCO export: loads back with pycocotools and decodes to the original masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nseg_data import coco
from nseg_data.sample import Modality, Sample


def sample(sid: str) -> Sample:
    lab = np.zeros((20, 30), np.uint32)
    lab[2:6, 3:9] = 1
    lab[10:18, 20:29] = 2
    lab[0:3, 27:30] = 5  # touches the right edge; labels need not be consecutive
    img = np.dstack([np.where(lab > 0, 180, 5).astype(np.uint8)] * 3)
    return Sample(sid, img, lab, Modality.FLUORESCENCE, "synthetic")


def test_structure_without_pycocotools():
    d = coco.coco_dict([sample("a"), sample("b")], split="val")
    assert [i["file_name"] for i in d["images"]] == ["a.png", "b.png"]
    assert len(d["annotations"]) == 6
    ann = d["annotations"][0]
    assert ann["bbox"] == [3, 2, 6, 4] and ann["area"] == 24 and ann["iscrowd"] == 0
    assert len({a["id"] for a in d["annotations"]}) == 6


def test_own_rle_writer_matches_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools (extra 'coco') not installed")
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = rng.random((13, 17)) > rng.random()
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
        assert coco.counts_to_string(coco.rle_counts(m)) == ref


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 15), st.integers(1, 15))))
def test_uncompressed_counts_reconstruct_mask(m):
    counts = coco.rle_counts(m)
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    assert np.array_equal(flat.reshape(m.shape[1], m.shape[0]).T, m)


def test_export_loads_in_pycocotools(tmp_path):
    pytest.importorskip("pycocotools", reason="pycocotools (extra 'coco') not installed")
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    s = sample("img1")
    e = coco.export_split([s], tmp_path, "train")
    assert (e.n_images, e.n_annotations) == (1, 3)
    assert (tmp_path / "images" / "img1.png").exists()
    c = COCO(str(e.json_path))
    anns = c.loadAnns(c.getAnnIds(imgIds=[1]))
    for ann, lab in zip(anns, (1, 2, 5), strict=True):
        assert np.array_equal(c.annToMask(ann).astype(bool), s.labels == lab)
        assert mask_utils.area(ann["segmentation"]) == ann["area"]
    assert json.loads(e.json_path.read_text())["categories"][0]["name"] == "nucleus"


def test_unlabelled_sample_rejected():
    s = sample("a")
    bare = Sample("u", s.image, None, Modality.FLUORESCENCE, "x")
    with pytest.raises(ValueError, match="no labels"):
        coco.coco_dict([bare])
