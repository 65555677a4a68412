from pathlib import Path

import pytest

from nseg_train.config import ConfigError, config_from_dict, load_config


@pytest.mark.parametrize("preset", ["unet", "unet-paper", "unet-finetune", "unet-long", "unet-multi", "maskrcnn-multi"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.name == preset


def test_paper_preset_is_the_seed_setup():
    cfg = load_config("unet-paper")
    assert cfg.model.channels == (4, 8, 16, 32, 64)
    assert cfg.model.strides == (2, 2, 2, 2) and cfg.model.num_res_units == 2
    assert cfg.data.resize == 512 and cfg.data.crop_size == 96 and cfg.data.crops_per_image == 4
    assert cfg.optim.optimizer == "adam" and cfg.optim.lr == 0.01 and cfg.optim.epochs == 25
    assert cfg.optim.loss == "dice" and cfg.eval.instances == "components" and cfg.eval.every == 2


def test_default_predicts_separation():
    cfg = load_config("unet")
    assert cfg.model.out_channels == 2 and cfg.eval.instances == "watershed" and cfg.data.resize is None


def test_unknown_key_is_an_error(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\noptim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError, match="lrr"):
        load_config(p)


@pytest.mark.parametrize(
    "patch, msg",
    [
        ({"data": {"crop_size": 100}}, "multiple of 16"),
        ({"model": {"channels": [4, 8], "strides": [2, 2]}}, "one entry fewer"),
        ({"model": {"targets": "fg"}}, "watershed"),
        ({"optim": {"lr": -1}}, "positive"),
        ({"augment": {"invert_p": 2}}, "probability"),
        ({"model": {"deep_supervision": 4}}, "deep_supervision"),
        ({"data": {"modalities": ["histolgy"]}}, "data.modalities"),
        ({"data": {"modalities": []}}, "data.modalities"),
        ({"data": {"min_nucleus_diameter": 2}}, "4-200 px"),
        ({"data": {"min_nucleus_diameter": 20, "resize": 256}}, "choose one"),
        ({"data": {"min_nucleus_diameter": 20, "crop_sampler": "pos_neg"}}, "crop_sampler: random"),
        ({"data": {"min_nucleus_diameter": 20}, "model": {"kind": "maskrcnn"}}, "for the UNet"),
    ],
)
def test_invalid_values_rejected(patch, msg):
    with pytest.raises(ConfigError, match=msg):
        config_from_dict({"name": "x", **patch})


def test_missing_preset_lists_presets():
    with pytest.raises(ConfigError, match="unet-paper"):
        load_config("no-such-preset")


def test_round_trip_through_dict():
    cfg = load_config("unet")
    assert config_from_dict(cfg.to_dict()) == cfg


def test_deep_supervision_round_trips_and_stays_out_of_plain_configs():
    plain = load_config("unet")
    # Checkpoints written before the option existed still match a plain config (--init, --resume).
    assert "deep_supervision" not in plain.to_dict()["model"]
    deep = config_from_dict({**plain.to_dict(), "model": {**plain.to_dict()["model"], "deep_supervision": 2}})
    assert deep.to_dict()["model"]["deep_supervision"] == 2
    assert config_from_dict(deep.to_dict()) == deep


def test_expert_modalities_round_trip_and_stay_out_of_plain_configs():
    cfg = config_from_dict({"name": "x", "data": {"modalities": ["histology"]}})
    assert cfg.data.modalities == ("histology",)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert "modalities" not in load_config("unet").to_dict()["data"]
