"""The post-processing searches of `nseg-train tune`, on synthetic score functions."""

import numpy as np
import pytest

from nseg_train.tune import FLOOR_PENALTY, SourceObjective, coordinate_search, overrides, unet_ablation


def test_coordinate_search_climbs_to_the_grid_optimum_of_a_separable_score():
    target = {"a": 3, "b": 0.2}
    score = lambda p: -abs(p["a"] - target["a"]) - 10 * abs(p["b"] - target["b"])  # noqa: E731
    best, s = coordinate_search(score, {"a": 1, "b": 0.5}, {"a": (1, 2, 3, 4), "b": (0.1, 0.2, 0.5)})
    assert best == target and s == 0


def test_ablation_finds_per_modality_parameters_and_keeps_small_modalities_global():
    # Fluorescence scores best at seed_threshold 0.5, histology at 0.7 with h-maxima 0.2;
    # brightfield (2 images) prefers 0.3 but is too small to tune on its own.
    modalities = ["fluorescence"] * 6 + ["histology"] * 5 + ["brightfield"] * 2
    want = {"fluorescence": (0.5, 0.0), "histology": (0.7, 0.2), "brightfield": (0.3, 0.0)}

    def score_images(p, idx):
        return [1 - abs(p["seed_threshold"] - want[modalities[i]][0]) - abs(p["seed_h"] - want[modalities[i]][1])
                for i in idx]

    grid = {"seed_threshold": (0.3, 0.5, 0.7), "seed_h": (0.0, 0.2), "min_size": (8,)}
    start = {"seed_threshold": 0.5, "seed_h": 0.0, "min_size": 8}
    a = unet_ablation(score_images, len(modalities), modalities, start, grid=grid)
    assert a.combined_params["histology"] == {"seed_threshold": 0.7, "seed_h": 0.2, "min_size": 8}
    assert a.combined_params["brightfield"] == start and a.combined_params["fluorescence"] == start
    assert a.modality_params["histology"]["seed_h"] == 0.0  # h-maxima excluded from that row
    assert a.combined > a.by_modality > a.global_thresholds
    assert np.isclose(a.combined, np.mean([1] * 6 + [1] * 5 + [0.8] * 2))
    assert overrides(start, a.combined_params) == {"histology": {"seed_threshold": 0.7, "seed_h": 0.2}}


def test_ablation_breaks_each_row_down_by_modality():
    modalities = ["fluorescence"] * 5 + ["histology"] * 5

    def score_images(p, idx):
        return [p["seed_threshold"] if modalities[i] == "histology" else 1 - p["seed_threshold"] for i in idx]

    grid = {"seed_threshold": (0.3, 0.7), "seed_h": (0.0,)}
    a = unet_ablation(score_images, 10, modalities, {"seed_threshold": 0.3, "seed_h": 0.0}, grid=grid)
    assert a.per_modality["global_thresholds"] == {"fluorescence": 0.7, "histology": 0.3}
    assert a.per_modality["combined"] == {"fluorescence": 0.7, "histology": 0.7}
    assert np.isclose(a.combined, 0.7) and np.isclose(a.global_thresholds, 0.5)


def test_the_source_objective_counts_each_source_once_and_guards_its_floor():
    sources = ("dsb",) * 8 + ("tnbc",) * 2
    scores = [0.6] * 8 + [0.2] * 2
    assert SourceObjective(sources)(scores) == pytest.approx(0.4)
    guarded = SourceObjective(sources, {"dsb": 0.62, "tnbc": 0.1}, max_drop=0.01)
    # dsb is 0.01 below its allowed 0.61: penalised FLOOR_PENALTY-fold
    assert guarded(scores) == pytest.approx(0.4 - FLOOR_PENALTY * 0.01)
    assert SourceObjective(("a",) * 3)([0.1, 0.2, 0.6]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="max_drop"):
        SourceObjective(sources, max_drop=-1)


def test_a_modality_search_never_trades_a_guarded_source_away():
    # One modality, two sources: a large one that prefers seed_threshold 0.3 a little and a small
    # one that prefers 0.7 a lot. The mean of the sources prefers 0.7; with the large source's
    # floor at its 0.3 score, 0.7 costs it more than allowed and 0.3 stays.
    modalities = ["fluorescence"] * 12
    sources = ("big",) * 9 + ("small",) * 3

    def score_images(p, idx):
        return [(1 - 0.2 * (p["seed_threshold"] == 0.7)) if sources[i] == "big" else (0.5 + 0.4 * (p["seed_threshold"] == 0.7))
                for i in idx]

    grid = {"seed_threshold": (0.3, 0.7), "seed_h": (0.0,)}
    start = {"seed_threshold": 0.3, "seed_h": 0.0}
    plain = unet_ablation(score_images, 12, modalities, start, grid=grid)
    fair = unet_ablation(score_images, 12, modalities, start, grid=grid, objective=SourceObjective(sources))
    guarded = unet_ablation(score_images, 12, modalities, start, grid=grid,
                            objective=SourceObjective(sources, {"big": 1.0, "small": 0.5}, max_drop=0.05))
    assert plain.combined_params["fluorescence"]["seed_threshold"] == 0.3
    assert fair.combined_params["fluorescence"]["seed_threshold"] == 0.7
    assert fair.combined == pytest.approx((0.8 + 0.9) / 2)
    assert guarded.combined_params["fluorescence"]["seed_threshold"] == 0.3
