"""The shipped Mask R-CNN on real images: tiled equals untiled, and the bundle agrees with torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nseg_data.dataset import open_dataset
from nseg_data.metrics import match

from nseg_train import default_checkpoint_path
from nseg_train.checkpoint import load_model
from nseg_train.deploy import runtime_predictor

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "examples" / "sample" / "stage1_train"
CKPT = default_checkpoint_path("maskrcnn")
CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(not CKPT.is_file(), reason=f"{CKPT.name} is not shipped in this checkout")


@pytest.fixture(scope="module")
def model_cfg():
    torch.set_num_threads(2)
    model, cfg, _ = load_model(CKPT)
    return model.eval(), cfg


@pytest.fixture(scope="module")
def samples():
    res = open_dataset(SAMPLE)
    assert not res.errors and len(res.samples) == 7
    return res.samples


def test_small_tiles_find_the_nuclei_one_whole_image_pass_finds(model_cfg, samples):
    """Small tiles (256 px with the bundle's 64 px halo) cut many nuclei at tile edges. Each must be
    kept once: every nucleus of the tiled run is one of the whole-image run's (no duplicates, no
    fragments). Agreement F1@0.5 >= 0.98: a few nuclei near a tile edge score just below the
    threshold when the tile gives them less context (measured 0.985 on these 7 images)."""
    model, cfg = model_cfg
    tp = n_tiled = n_whole = 0
    for s in samples:
        h, w = s.image.shape[:2]
        side = 32 * int(np.ceil((max(h, w) + 2 * 64) / 32))
        whole = runtime_predictor(model, cfg, CPU, tile=side, overlap=64)
        assert len(whole.maskrcnn_tiles(h, w)) == 1
        tiled = runtime_predictor(model, cfg, CPU, tile=256, overlap=cfg.eval.halo)
        assert len(tiled.maskrcnn_tiles(h, w)) >= 4 and cfg.eval.halo == 64
        a = np.asarray(whole.predict(s.image).labels)
        b = np.asarray(tiled.predict(s.image).labels)
        m = match(a, b, 0.5)
        tp += m.tp
        n_whole += m.tp + m.fn
        n_tiled += m.tp + m.fp
    f1 = 2 * tp / (n_whole + n_tiled)
    assert n_whole >= 150
    assert n_tiled - tp <= 1, (tp, n_whole, n_tiled)
    assert f1 >= 0.98, (tp, n_whole, n_tiled)
