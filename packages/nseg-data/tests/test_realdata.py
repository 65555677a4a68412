"""A handful of real DSB images: shared data when present, and the committed sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nseg_data_synth import SAMPLE_TRAIN, SHARED_TRAIN

from nseg_data import rle
from nseg_data.dataset import open_dataset
from nseg_data.metrics import score_image
from nseg_data.sample import Modality
from nseg_data.split import load_splits

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def shared_ids() -> list[str]:
    if not SHARED_TRAIN.is_dir():
        pytest.skip(f"shared DSB data not found at {SHARED_TRAIN}")
    return sorted(p.name for p in SHARED_TRAIN.iterdir() if p.is_dir())[:4]


def test_shared_data_few_images(shared_ids, tmp_path):
    res = open_dataset(SHARED_TRAIN, ids=shared_ids, cache_dir=tmp_path)
    assert not res.errors and len(res.samples) == 4
    for s in res.samples:
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.labels.dtype == np.uint32
        n_files = len(list((SHARED_TRAIN / s.id / "masks").glob("*.png")))
        assert s.meta["n_masks"] == n_files and s.n_nuclei == n_files  # masks do not overlap here
        assert score_image(s.labels, s.labels).dsb == 1.0
        # Kaggle RLE of every nucleus decodes back to it.
        for lab_rle, v in zip(rle.labels_to_rles(s.labels)[:5], range(1, 6), strict=False):
            assert np.array_equal(rle.decode(lab_rle, s.shape), s.labels == v)
    again = open_dataset(SHARED_TRAIN, ids=shared_ids, cache_dir=tmp_path)
    assert again.cached == 4


def test_committed_sample_covers_modalities_and_matches_splits():
    if not SAMPLE_TRAIN.is_dir():
        pytest.skip(f"sample not found at {SAMPLE_TRAIN}")
    res = open_dataset(SAMPLE_TRAIN)
    assert not res.errors
    mods = {s.id: s.modality for s in res.samples}
    assert set(mods.values()) == set(Modality)
    splits = load_splits(SAMPLE_TRAIN.parent / "splits.json")
    assert set(splits["all"]) == set(mods)
    assert json.loads((SAMPLE_TRAIN.parent / "splits.json").read_text())["modality"] == {k: str(v) for k, v in mods.items()}
