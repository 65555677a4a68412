from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nseg_infer.engine.blend import blend_weights
from nseg_infer.engine.tiling import block_grid, cut_by_margin, tile_grid
from nseg_infer.regions import Window


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 700), w=st.integers(1, 700), tile_units=st.integers(2, 12), halo=st.integers(0, 40),
       div=st.sampled_from([1, 8, 16, 32]))
def test_cores_tile_the_image_exactly_once(h, w, tile_units, halo, div):
    tile = tile_units * div
    if 2 * halo >= tile:
        with pytest.raises(ValueError):
            tile_grid(h, w, tile, halo, div)
        return
    grid = tile_grid(h, w, tile, halo, div)
    cover = np.zeros((h, w), np.int32)
    for t in grid.tiles:
        assert t.read.shape == grid.tile_shape
        assert grid.tile_shape[0] % div == 0 and grid.tile_shape[1] % div == 0
        assert grid.tile_shape[0] <= tile and grid.tile_shape[1] <= tile
        # The core keeps a full halo of context on every side inside the read window.
        assert t.read.y0 + halo <= t.core.y0 and t.core.y1 <= t.read.y1 - halo
        assert t.read.x0 + halo <= t.core.x0 and t.core.x1 <= t.read.x1 - halo
        assert 0 <= t.core.y0 < t.core.y1 <= h and 0 <= t.core.x0 < t.core.x1 <= w
        cover[t.core.slices] += 1
    assert (cover == 1).all()
    assert [t.index for t in grid.tiles] == list(range(len(grid)))
    if (tile - 2 * halo) % div == 0:
        # Every core starts on the network's stride grid, so overlapping tiles pool alike.
        assert all(t.core.y0 % div == 0 and t.core.x0 % div == 0 for t in grid.tiles)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 900), w=st.integers(1, 900), block=st.integers(1, 400), margin=st.integers(0, 64))
def test_block_cores_partition_and_outer_is_core_plus_margin(h, w, block, margin):
    cover = np.zeros((h, w), np.int32)
    for b in block_grid(h, w, block, margin):
        cover[b.core.slices] += 1
        assert b.outer.y0 == max(0, b.core.y0 - margin) and b.outer.x1 == min(w, b.core.x1 + margin)
    assert (cover == 1).all()


def test_small_image_is_one_small_padded_tile():
    grid = tile_grid(40, 70, 512, 32, 16)
    assert len(grid) == 1
    assert grid.tile_shape == (112, 144)  # 40 + 64 and 70 + 64 rounded up to 16


def test_blend_weights_vanish_at_the_edge_and_are_one_in_the_core():
    wt = blend_weights((64, 64), 16)
    assert wt[0].max() == 0 and wt[:, 0].max() == 0
    assert (wt[16:48, 16:48] == 1).all()
    assert np.allclose(wt, wt[::-1, ::-1])
    assert (blend_weights((8, 8), 0) == 1).all()


def test_cut_by_margin_only_at_window_edges_inside_the_image():
    image = (100, 100)
    inner = Window(10, 60, 20, 70)  # a block's outer window away from every image edge
    assert not cut_by_margin(Window(5, 10, 5, 10), inner, image)
    assert cut_by_margin(Window(0, 10, 5, 10), inner, image)      # top
    assert cut_by_margin(Window(5, 50, 5, 10), inner, image)      # bottom
    assert cut_by_margin(Window(5, 10, 0, 10), inner, image)      # left
    assert cut_by_margin(Window(5, 10, 5, 50), inner, image)      # right
    whole = Window(0, 100, 0, 100)  # the image's own edges cut nothing
    assert not cut_by_margin(Window(0, 100, 0, 100), whole, image)
