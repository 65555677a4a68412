"""Kaggle RLE: convention, round trips, and errors that name the source."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nseg_data import rle
from nseg_data.errors import DataError


def test_column_major_one_indexed():
    m = np.zeros((3, 4), bool)
    m[0:2, 0] = True  # pixels 1, 2 (down the first column)
    m[2, 1] = True  # pixel 6 (first column holds 1..3)
    m[:, 3] = True  # pixels 10..12
    assert rle.encode(m) == "1 2 6 1 10 3"
    assert np.array_equal(rle.decode("1 2 6 1 10 3", (3, 4)), m)


def test_empty_mask_and_empty_text():
    assert rle.encode(np.zeros((5, 5), bool)) == ""
    assert not rle.decode("", (5, 5)).any()
    assert not rle.decode(float("nan"), (5, 5)).any()


@settings(max_examples=150, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 17), st.integers(1, 17))))
def test_round_trip_mask(mask):
    text = rle.encode(mask)
    assert np.array_equal(rle.decode(text, mask.shape), mask)


@settings(max_examples=150, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 17), st.integers(1, 17))))
def test_encoding_is_canonical(mask):
    runs = rle.encode_runs(mask).reshape(-1, 2)
    assert (runs[:, 1] >= 1).all()
    # Runs are separated by at least one background pixel, so they never merge.
    assert (runs[1:, 0] > runs[:-1, 0] + runs[:-1, 1]).all()
    assert runs[:, 1].sum() == mask.sum()
    assert rle.encode(rle.decode(rle.encode(mask), mask.shape)) == rle.encode(mask)


@settings(max_examples=50, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 4)))
def test_labels_to_rles_round_trip(lab):
    rles = rle.labels_to_rles(lab)
    present = [v for v in np.unique(lab) if v]
    assert len(rles) == len(present)
    for v, text in zip(present, rles, strict=True):
        assert np.array_equal(rle.decode(text, lab.shape), lab == v)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1 2 3", "odd number"),
        ("1 x", "non-integer"),
        ("0 3", "start below 1"),
        ("4 0", "length below 1"),
        ("5 2 1 2", "not sorted"),
        ("1 3 3 2", "overlap"),
        ("11 3", "past the end"),
    ],
)
def test_bad_rle_names_source(text, problem):
    with pytest.raises(DataError) as ei:
        rle.decode(text, (3, 4), source="labels.csv line 7")
    assert "labels.csv line 7" in str(ei.value)
    assert problem in str(ei.value)


def test_run_ending_on_last_pixel_is_fine():
    assert rle.decode("10 3", (3, 4))[:, 3].all()
