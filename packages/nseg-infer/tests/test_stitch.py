from __future__ import annotations

import numpy as np
import pytest
from infer_testkit import FakeDetector, f1_and_counts, same_partition, synthetic_blobs

from nseg_infer.engine.blend import UNetMerger
from nseg_infer.engine.blocks import Paster, field_instances
from nseg_infer.engine.detections import MaskRCNNMerger
from nseg_infer.engine.instances import WatershedParams, unet_instances
from nseg_infer.engine.predictor import Predictor, RunConfig
from nseg_infer.engine.tiling import Tile, block_grid, tile_grid
from nseg_infer.regions import Window
from nseg_infer.runners.file_config import FileConfig


def untiled(bundle, image) -> Predictor:
    side = -(-(max(image.shape[:2]) + 2 * 24) // 16) * 16
    return Predictor(bundle, RunConfig(tile=side, block=8192))


@pytest.fixture(scope="module")
def one_pass(unet_bundle, mosaic):
    p = untiled(unet_bundle, mosaic)
    assert len(p.grid(*mosaic.shape[:2])) == 1
    return p.predict(mosaic)


@pytest.fixture(scope="module")
def tiled(unet_bundle):
    return Predictor(unet_bundle)  # tile 128, halo 24 from the bundle


def test_tiled_equals_untiled_on_mosaic(one_pass, tiled, mosaic):
    assert len(tiled.grid(*mosaic.shape[:2])) >= 50
    pred = tiled.predict(mosaic)
    f1, n_one, n_tiled = f1_and_counts(one_pass.labels, pred.labels)
    assert n_one >= 50
    assert f1 >= 0.99
    assert abs(n_tiled - n_one) <= 0.01 * n_one


def test_naive_per_tile_labelling_fails_the_same_check(one_pass, unet_bundle, mosaic):
    """The equality check above is sharp enough to catch seams: labelling each tile core on its
    own (no blending, no seam handling) cuts nuclei and fails it."""
    p = untiled(unet_bundle, mosaic)
    field = p.backend.run(np.zeros((1, 3, 32, 32), np.float32))  # warm session; real field below
    assert field["probs"].shape == (1, 2, 32, 32)
    from nseg_infer.engine.stats import image_stats
    from nseg_infer.engine.tiles import read_tile
    from nseg_infer.regions import ArraySource

    src = ArraySource(mosaic)
    lo, hi, _ = image_stats(src, p.bundle.preprocessing.normalization)
    grid = tile_grid(*mosaic.shape[:2], 128, 24, 16)
    naive = np.zeros(mosaic.shape[:2], np.uint32)
    params = WatershedParams.from_dict(dict(p.bundle.postprocessing))
    for t in grid.tiles:
        x = read_tile(src, t, lo, hi)[None].transpose(0, 3, 1, 2)
        probs = p.backend.run(np.ascontiguousarray(x))["probs"][0]
        c, r = t.core, t.read
        sl = (slice(c.y0 - r.y0, c.y1 - r.y0), slice(c.x0 - r.x0, c.x1 - r.x0))
        lab = unet_instances(probs[0][sl], probs[1][sl], params)
        naive[c.slices] = np.where(lab > 0, lab + naive.max(), 0)
    f1, n_one, n_naive = f1_and_counts(one_pass.labels, naive)
    assert f1 < 0.99 or abs(n_naive - n_one) > 0.01 * n_one


def test_blockwise_instances_equal_one_pass(one_pass, unet_bundle, mosaic):
    p = untiled(unet_bundle, mosaic)
    side = p.tile
    from nseg_infer.engine.stats import image_stats
    from nseg_infer.engine.tiles import read_tile
    from nseg_infer.regions import ArraySource

    src = ArraySource(mosaic)
    lo, hi, _ = image_stats(src, p.bundle.preprocessing.normalization)
    t = tile_grid(*mosaic.shape[:2], side, 24, 16).tiles[0]
    x = read_tile(src, t, lo, hi)[None].transpose(0, 3, 1, 2)
    probs = p.backend.run(np.ascontiguousarray(x))["probs"][0][:, 24:24 + mosaic.shape[0], 24:24 + mosaic.shape[1]]
    params = WatershedParams.from_dict(dict(p.bundle.postprocessing))
    whole = unet_instances(probs[0], probs[1], params)

    def blockwise(margin: int) -> tuple[np.ndarray, int]:
        """The block step `predict` runs (`field_instances`, `Paster`) over the one-pass field."""
        paster = Paster(np.zeros(mosaic.shape[:2], np.uint32))
        for b in block_grid(*mosaic.shape[:2], 200, margin):
            paster.paste(b, field_instances(probs[:, b.outer.y0:b.outer.y1, b.outer.x0:b.outer.x1], b,
                                            mosaic.shape[:2], params))
        return paster.canvas, paster.cut

    blocks, cut = blockwise(64)
    assert cut == 0
    assert whole.max() >= 50
    assert same_partition(whole, blocks, min_nuclei=50)
    # A margin smaller than the nuclei cannot be exact, and says so.
    assert blockwise(2)[1] > 0


def test_streamed_blocks_equal_single_block(unet_bundle, mosaic, tiled):
    single = tiled.predict(mosaic)
    blocked = Predictor(unet_bundle, RunConfig(block=256, margin=64)).predict(mosaic)
    assert blocked.cut_clumps == 0
    assert single.max_label == blocked.max_label >= 50
    assert same_partition(single.labels, blocked.labels, min_nuclei=50)



def test_blocks_run_alone_and_pasted_in_block_order_are_predict(unet_bundle, mosaic):
    """The cluster's block task: a plan made without a model (`Planner`), each block labelled on
    its own (`run_block`, in any order), pasted in block order with prefix-sum ids, is `predict`."""
    from nseg_infer.engine.blocks import Paster
    from nseg_infer.engine.plan import Planner
    from nseg_infer.regions import ArraySource

    p = Predictor(unet_bundle, RunConfig(block=300, margin=64))
    src = ArraySource(mosaic)
    plan = Planner(p.bundle, p.config).plan(src)
    assert plan == p.plan(src) and len(plan.blocks) == 12
    results = {b.index: p.run_block(src, b, plan) for b in reversed(plan.blocks)}
    paster = Paster(np.zeros(mosaic.shape[:2], np.uint32))
    for b in plan.blocks:
        paster.paste(b, results[b.index])
    pred = p.predict(mosaic)
    assert paster.count == pred.max_label >= 50
    np.testing.assert_array_equal(paster.canvas, pred.labels)

def test_large_image_canvas_is_on_disk_matches_and_goes_with_its_block(unet_bundle, mosaic, tiled, tmp_path):
    ref = tiled.predict(mosaic)
    p = Predictor(unet_bundle, RunConfig(block=300, margin=64))
    files = FileConfig(large_px=1000)
    with files.canvas(mosaic.shape[:2], work_dir=tmp_path) as canvas:
        big = p.predict(mosaic, labels=canvas)
        assert isinstance(big.labels, np.memmap) and len(list(tmp_path.iterdir())) == 1
        assert ref.max_label == big.max_label >= 50
        assert same_partition(ref.labels, np.asarray(big.labels), min_nuclei=50)
    assert not list(tmp_path.iterdir())
    # An error inside the block (here a canvas of the wrong shape) leaves no temp file either.
    with pytest.raises(ValueError, match="canvas"), files.canvas((10, 200), work_dir=tmp_path) as wrong:
        p.predict(mosaic, labels=wrong)
    assert not list(tmp_path.iterdir())


def test_blend_is_exact_for_a_model_with_small_receptive_field():
    grid = tile_grid(300, 250, 64, 16, 16)
    rng = np.random.default_rng(0)
    field = rng.random((2, 300 + 64, 250 + 64)).astype(np.float32)  # image padded by 32 px
    m = UNetMerger(grid)
    outs = np.stack([field[:, t.read.y0 + 32:t.read.y1 + 32, t.read.x0 + 32:t.read.x1 + 32] for t in grid.tiles])
    m.aggregate(outs, grid.tiles)
    np.testing.assert_allclose(m.finalize(), field[:, 32:332, 32:282], rtol=1e-5)


def test_merger_rejects_uncovered_window():
    grid = tile_grid(100, 100, 64, 16, 16)
    m = UNetMerger(grid)
    m.aggregate(np.ones((1, 2, 64, 64), np.float32), grid.tiles[:1])
    with pytest.raises(RuntimeError, match="uncovered"):
        m.finalize()


def test_maskrcnn_keeps_each_instance_only_in_responsible_tile():
    canvas = np.zeros((100, 200), np.uint32)
    merger = MaskRCNNMerger(canvas)
    mask = np.ones((1, 1, 28, 28), np.float32)
    left = Tile(0, Window(-10, 90, -10, 110), Window(0, 100, 0, 100))
    right = Tile(1, Window(-10, 90, 90, 190), Window(0, 100, 100, 200))
    # One nucleus centred at x=102 (image), seen by both tiles: only the right one owns it.
    seen_left = {"boxes": np.array([[106.0, 40, 118, 50]]), "scores": np.array([0.9]), "masks": mask}
    seen_right = {"boxes": np.array([[6.0, 40, 18, 50]]), "scores": np.array([0.8]), "masks": mask}
    assert merger.aggregate(seen_left, left) == 0
    assert merger.aggregate(seen_right, right) == 1
    labels, scores = merger.finalize()
    assert set(np.unique(labels)) == {0, 1}
    assert np.count_nonzero(labels) == 12 * 10
    assert scores.tolist() == pytest.approx([0.8])


def test_maskrcnn_tiled_run_matches_ground_truth(maskrcnn_bundle):
    img, gt = synthetic_blobs((500, 620), 300, seed=3)
    det = FakeDetector()
    pred = Predictor(maskrcnn_bundle, backend=det).predict(img)
    assert det.calls >= 30
    f1, n_gt, n_pred = f1_and_counts(gt, np.asarray(pred.labels))
    assert n_gt >= 200
    assert n_pred == n_gt
    assert f1 >= 0.99
    assert len(pred.scores) >= n_pred


def _two_tiles():
    left = Tile(0, Window(-10, 90, -10, 110), Window(0, 100, 0, 100))
    right = Tile(1, Window(-10, 90, 90, 190), Window(0, 100, 100, 200))
    return left, right


def _det(box, score=0.9):
    return {"boxes": np.array([box], np.float64), "scores": np.array([score]), "masks": np.ones((1, 1, 28, 28), np.float32)}


@pytest.mark.parametrize("order", ["left-first", "right-first"])
def test_maskrcnn_nucleus_whose_boxes_straddle_the_core_edge_is_kept_once(order):
    """Each tile's box centre falls in the other tile's core (x=101 seen from the left, x=99 from
    the right): neither tile owns it by its centre, and it must still be kept exactly once."""
    left, right = _two_tiles()
    canvas = np.zeros((100, 200), np.uint32)
    merger = MaskRCNNMerger(canvas, slack=8)
    seen_left = _det([106.0, 40, 116, 50])   # image x 96..106, centre 101 (right core)
    seen_right = _det([4.0, 40, 14, 50])     # image x 94..104, centre 99 (left core)
    pairs = [(seen_left, left), (seen_right, right)]
    for out, tile in pairs if order == "left-first" else pairs[::-1]:
        merger.aggregate(out, tile)
    labels, scores = merger.finalize()
    assert labels.max() == 1 and len(scores) == 1
    assert 95 <= np.count_nonzero(labels) <= 120


def test_maskrcnn_both_tiles_owning_one_nucleus_keep_it_once():
    left, right = _two_tiles()
    canvas = np.zeros((100, 200), np.uint32)
    merger = MaskRCNNMerger(canvas)
    # One nucleus, seen with boxes x 92..102 (centre 97, left core) and 96..106 (centre 101, right core).
    assert merger.aggregate(_det([102.0, 40, 112, 50]), left) == 1
    assert merger.aggregate(_det([6.0, 40, 16, 50]), right) == 0
    labels, _ = merger.finalize()
    assert labels.max() == 1 and np.count_nonzero(labels) == 100


def test_maskrcnn_touching_neighbours_are_not_duplicates():
    left, right = _two_tiles()
    canvas = np.zeros((100, 200), np.uint32)
    merger = MaskRCNNMerger(canvas)
    merger.aggregate(_det([100.0, 40, 110, 50]), left)   # image x 90..100, centre 95 (left)
    merger.aggregate(_det([11.0, 40, 20, 50]), right)    # image x 101..110, centre 105.5 (right)
    labels, _ = merger.finalize()
    assert labels.max() == 2
    assert np.count_nonzero(labels == 1) == 100 and np.count_nonzero(labels == 2) == 90


def test_maskrcnn_detections_merged_again_reproduce_predict(maskrcnn_bundle):
    """`nseg-train tune` searches thresholds on `detections` + `maskrcnn_merger`: with the bundle's
    own thresholds that must be exactly `predict`."""
    img, _ = synthetic_blobs((300, 340), 120, seed=5)
    predictor = Predictor(maskrcnn_bundle, backend=FakeDetector())
    pred = predictor.predict(img)
    found = predictor.detections(img)
    assert len(found) >= 4
    merger = predictor.maskrcnn_merger(np.zeros(img.shape[:2], np.uint32))
    for tile, out in found:
        merger.aggregate(out, tile)
    labels, scores = merger.finalize()
    assert np.array_equal(labels, np.asarray(pred.labels)) and labels.max() > 50
    assert np.array_equal(scores, pred.scores)
    # A stricter size threshold is a real change, not ignored.
    strict = predictor.maskrcnn_merger(np.zeros(img.shape[:2], np.uint32), min_size=10_000)
    for tile, out in found:
        strict.aggregate(out, tile)
    assert strict.finalize()[0].max() == 0


@pytest.mark.parametrize("shape", [(40, 50), (300, 340), (513, 129)])
def test_maskrcnn_tiles_are_the_fixed_graph_size(maskrcnn_bundle, shape):
    """The detector graph has a fixed input: every read window is exactly one tile, whatever the
    balanced grid's core sizes, and the cores still cover the image exactly once."""
    p = Predictor(maskrcnn_bundle, backend=FakeDetector())
    tiles = p.maskrcnn_tiles(*shape)
    assert {t.read.shape for t in tiles} == {(p.tile, p.tile)}
    cover = np.zeros(shape, np.int32)
    for t in tiles:
        cover[t.core.slices] += 1
        assert t.read.y0 <= t.core.y0 and t.read.x0 <= t.core.x0
        assert t.read.y1 >= t.core.y1 and t.read.x1 >= t.core.x1
    assert (cover == 1).all()


def test_same_partition_needs_nuclei_to_call_two_images_the_same():
    empty = np.zeros((8, 8), np.uint32)
    assert not same_partition(empty, empty)
    one = empty.copy()
    one[2:4, 2:4] = 5
    assert same_partition(one, np.where(one > 0, 1, 0))
    assert not same_partition(one, one, min_nuclei=2)
