"""h-maxima seeds and per-modality post-processing."""

import numpy as np
import pytest

from nseg_infer.engine.instances import WatershedParams, check_by_modality, instance_params, unet_instances


def _two_bump_nucleus() -> tuple[np.ndarray, np.ndarray]:
    """One elongated nucleus whose distance ridge dips to 0.45 between peaks of 0.9 and 0.85."""
    x = np.linspace(0, 1, 120)
    ridge = np.interp(x, [0, 0.1, 0.3, 0.5, 0.7, 0.9, 1], [0, 0.5, 0.9, 0.45, 0.85, 0.5, 0])
    fg = np.zeros((40, 120), np.float32)
    fg[10:30, :] = 1
    across = 1 - np.abs(np.linspace(-1, 1, 20))[:, None]
    dist = np.zeros_like(fg)
    dist[10:30] = np.minimum(ridge[None, :], across + 0.3)
    return fg, dist


def test_h_maxima_seeds_keep_an_elongated_nucleus_whole_where_threshold_cores_split_it():
    fg, dist = _two_bump_nucleus()
    assert unet_instances(fg, dist, WatershedParams(seed_threshold=0.5, min_seed_area=1)).max() == 2
    assert unet_instances(fg, dist, WatershedParams(seed_threshold=0.5, min_seed_area=1, seed_h=0.5)).max() == 1
    # a small h keeps the two peaks apart: the dip is deeper than 0.2
    assert unet_instances(fg, dist, WatershedParams(seed_threshold=0.5, min_seed_area=1, seed_h=0.2)).max() == 2


def test_h_maxima_seeds_reject_peaks_under_the_seed_threshold():
    fg, dist = _two_bump_nucleus()
    low = dist * 0.5  # every peak under 0.5: no seed, the blob is one orphan instance
    assert unet_instances(fg, low, WatershedParams(seed_threshold=0.5, min_seed_area=1, seed_h=0.1)).max() == 1
    assert unet_instances(fg * 0, low, WatershedParams(seed_h=0.1)).max() == 0


def test_by_modality_overrides_only_the_named_modality():
    post = {"kind": "unet_watershed", "seed_threshold": 0.5, "min_size": 12,
            "by_modality": {"histology": {"seed_threshold": 0.7, "seed_h": 0.3}}}
    assert instance_params(post) == WatershedParams(seed_threshold=0.5, min_size=12)
    assert instance_params(post, "fluorescence") == WatershedParams(seed_threshold=0.5, min_size=12)
    assert instance_params(post, "histology") == WatershedParams(seed_threshold=0.7, min_size=12, seed_h=0.3)


@pytest.mark.parametrize(("section", "message"), [
    ({"phase": {"min_size": 3}}, "unknown modality 'phase'"),
    ({"histology": {"sigma": 1}}, "unknown key(s) sigma"),
    ({"histology": {"seed_threshold": 1.5}}, "seed_threshold must be in (0, 1)"),
])
def test_bad_by_modality_sections_are_named(section, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_by_modality(section)


def test_predictor_post_processes_each_image_by_its_inferred_modality(tmp_path):
    import json

    from infer_testkit import synthetic_blobs, write_bundle

    from nseg_infer.engine.predictor import Predictor

    root = write_bundle(tmp_path / "bundle")
    meta = json.loads((root / "metadata.json").read_text())
    # Fluorescence images lose every nucleus to a huge min_size; other looks keep the base step.
    meta["postprocessing"]["by_modality"] = {"fluorescence": {"min_size": 100000}}
    (root / "metadata.json").write_text(json.dumps(meta))
    predictor, plain = Predictor(root), Predictor(write_bundle(tmp_path / "plain"))

    grey, _ = synthetic_blobs((160, 160), 12, seed=3)
    fluo = np.repeat(grey[..., None], 3, axis=2)
    stained = fluo.copy()
    stained[..., 1] //= 2  # the same nuclei, coloured: inferred as histology
    assert predictor.modality(fluo) == "fluorescence" and predictor.modality(stained) == "histology"
    assert predictor.predict(fluo).max_label == 0
    assert plain.predict(fluo).max_label > 0
    np.testing.assert_array_equal(predictor.predict(stained).labels, plain.predict(stained).labels)
    many = predictor.predict_many([fluo, stained])
    assert many[0].max_label == 0
    np.testing.assert_array_equal(many[1].labels, plain.predict(stained).labels)
    fields = predictor.probabilities(fluo)
    assert fields.plan.modality == "fluorescence"  # what predict picks, for tuning to pass on
    assert predictor.instances(fields, modality=fields.plan.modality).max() == 0
    assert predictor.instances(fields, modality="histology").max() > 0


def test_flip_average_undoes_each_flip_and_means_the_outputs():
    from nseg_infer.engine.backends import FlipAverage

    class Asymmetric:
        """Output = input's first channel plus a ramp along x: a flip that is not undone shows."""

        name = "fake"

        def __init__(self):
            self.calls = 0

        def run(self, batch):
            self.calls += 1
            ramp = np.arange(batch.shape[3], dtype=np.float32)[None, None, None, :]
            return {"probs": batch[:, :1] + ramp}

    inner = Asymmetric()
    x = np.random.default_rng(0).random((2, 3, 8, 12)).astype(np.float32)
    out = FlipAverage(inner).run(x)["probs"]
    ramp = np.arange(12, dtype=np.float32)
    mean_ramp = (ramp + ramp[::-1]) / 2  # the ramp is fixed in output space: flipped back, half of it reverses
    np.testing.assert_allclose(out, x[:, :1] + mean_ramp[None, None, None, :], rtol=1e-6)
    assert inner.calls == 4 and FlipAverage(inner).name == "fake+flips"
    # A subset: the batch and its horizontal flip only, two calls.
    inner.calls = 0
    two = FlipAverage(inner, flips=((), (3,))).run(x)["probs"]
    np.testing.assert_allclose(two, x[:, :1] + mean_ramp[None, None, None, :], rtol=1e-6)
    assert inner.calls == 2
    inner.calls = 0
    vertical = FlipAverage(inner, flips=((), (2,))).run(x)["probs"]  # the ramp runs along x: untouched
    np.testing.assert_allclose(vertical, x[:, :1] + ramp[None, None, None, :], rtol=1e-6)
    with pytest.raises(ValueError, match="axes"):
        FlipAverage(inner, flips=((1,),))


def test_flips_refused_for_a_detector_bundle(tmp_path):
    from infer_testkit import write_bundle

    from nseg_infer.engine.predictor import Predictor, RunConfig

    with pytest.raises(ValueError, match="test-time flips apply to UNet bundles"):
        Predictor(write_bundle(tmp_path / "m", "maskrcnn"), RunConfig(flips=True), backend=object())
