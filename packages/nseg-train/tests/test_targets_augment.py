import numpy as np
import pytest
from nseg_data.metrics import match
from nseg_infer.engine.instances import WatershedParams, unet_instances

from nseg_train.augment import geometric, photometric, random_crop
from nseg_train.config import AugmentConfig
from nseg_train.targets import make_targets, normalized_distance


def two_touching_discs(h=64, w=96):
    yy, xx = np.mgrid[:h, :w]
    lab = np.zeros((h, w), np.uint32)
    lab[(yy - 32) ** 2 + (xx - 30) ** 2 <= 15**2] = 1
    lab[((yy - 32) ** 2 + (xx - 58) ** 2 <= 15**2) & (lab == 0)] = 2
    return lab


def test_normalized_distance_peaks_at_each_centre():
    lab = two_touching_discs()
    d = normalized_distance(lab)
    assert d[lab == 0].max() == 0
    for i in (1, 2):
        assert d[lab == i].max() == pytest.approx(1.0)
    assert d[32, 30] == pytest.approx(1.0, abs=0.1) and d[32, 58] > 0.9
    assert d[32, 44] < 0.2  # the touching seam is low


def test_watershed_on_ideal_targets_separates_touching_nuclei():
    lab = two_touching_discs()
    t = make_targets(lab, "fg_dist")
    pred = unet_instances(t[0], t[1], WatershedParams())
    assert pred.max() == 2
    assert match(lab, pred, 0.9).tp == 2


def test_crop_and_geometry_keep_image_and_target_aligned():
    rng = np.random.default_rng(0)
    lab = two_touching_discs()
    img = np.repeat((lab > 0).astype(np.float32)[..., None], 3, axis=2)
    tgt = make_targets(lab, "fg_dist")
    for scale in (0.7, 1.0, 1.4):
        ci, ct = random_crop(rng, img, tgt, 48, scale)
        gi, gt = geometric(rng, ci, ct, AugmentConfig(flips=True, rot90=True))
        assert gi.shape == (48, 48, 3) and gt.shape == (2, 48, 48)
        agree = ((gi[..., 0] > 0.5) == (gt[0] > 0.5)).mean()
        assert agree > 0.97


def test_photometric_inversion_and_grayscale():
    rng = np.random.default_rng(0)
    img = np.random.default_rng(1).random((8, 8, 3)).astype(np.float32)
    inv = photometric(rng, img, AugmentConfig(invert_p=1.0))
    assert np.allclose(inv, 1 - img)
    gray = photometric(rng, img, AugmentConfig(grayscale_p=1.0))
    assert np.allclose(gray[..., 0], gray[..., 1]) and np.allclose(gray[..., 0], img.mean(axis=2))


def test_hed_jitter_is_identity_at_zero_and_changes_only_stained_images():
    from nseg_train.augment import hed_jitter, is_colour, photometric
    from nseg_train.config import AugmentConfig

    rng = np.random.default_rng(0)
    stained = np.clip(rng.uniform(0.2, 0.95, (32, 32, 3)) * np.array([0.8, 0.5, 0.9]), 0, 1).astype(np.float32)
    np.testing.assert_allclose(hed_jitter(rng, stained, 0.0), stained, atol=1e-4)
    jittered = hed_jitter(np.random.default_rng(1), stained, 0.2)
    assert jittered.shape == stained.shape and jittered.min() >= 0 and jittered.max() <= 1
    assert np.abs(jittered - stained).mean() > 0.01

    grey = np.repeat(stained[..., :1], 3, axis=2)
    assert is_colour(stained) and not is_colour(grey)
    only_hed = AugmentConfig(flips=False, rot90=False, hed=0.2)
    np.testing.assert_array_equal(photometric(np.random.default_rng(2), grey, only_hed), grey)
    assert np.abs(photometric(np.random.default_rng(2), stained, only_hed) - stained).mean() > 0.01


def test_crop_resize_matches_a_pixel_area_aligned_zoom():
    """The torch resize replaces scipy's grid-mode zoom: same alignment, same values inside."""
    from scipy import ndimage as ndi

    from nseg_train.augment import _resize_pair

    rng = np.random.default_rng(3)
    img = ndi.gaussian_filter(rng.random((80, 80, 3)).astype(np.float32), (2, 2, 0))
    lab = two_touching_discs(80, 80)
    tgt = make_targets(lab, "fg_dist")
    for size in (48, 128):  # down and up
        f = size / 80
        ref_img = ndi.zoom(img, (f, f, 1), order=1, grid_mode=True, mode="grid-constant")
        ref_dist = ndi.zoom(tgt[1], f, order=1, grid_mode=True, mode="grid-constant")
        ri, rt = _resize_pair(img, tgt.copy(), size)
        assert ri.shape == (size, size, 3) and rt.shape == (2, size, size)
        inner = slice(2, size - 2)  # scipy pads with zeros outside, torch repeats the edge
        np.testing.assert_allclose(ri[inner, inner], ref_img[inner, inner], atol=0.02)
        np.testing.assert_allclose(rt[1, inner, inner], ref_dist[inner, inner], atol=0.05)
        assert set(np.unique(rt[0])) <= {0.0, 1.0}
        ref_fg = ndi.zoom(tgt[0], f, order=1, grid_mode=True, mode="grid-constant") > 0.5
        assert (rt[0].astype(bool) == ref_fg).mean() > 0.99
