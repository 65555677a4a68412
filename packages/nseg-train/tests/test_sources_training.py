"""Training across sources: balanced draws, each modality's look kept, per-source validation choosing
best.pt, and what `optim.amp` means on a CPU."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from nseg_data.sample import Modality, Sample
from nseg_data.split import load_splits
from nseg_infer.engine import cpu
from PIL import Image
from typer.testing import CliRunner

from nseg_train import engine
from nseg_train.augment import photometric
from nseg_train.cli import app
from nseg_train.config import AugmentConfig, load_config
from nseg_train.datasets import sampling_weights
from nseg_train.evaluate import evaluate_samples


def test_source_shares_follow_the_balance():
    mods = ["f"] * 90 + ["h"] * 10 + ["h"] * 10
    srcs = ["big"] * 100 + ["small"] * 10
    even = sampling_weights(mods, 0.0, srcs, 1.0)
    assert even[100:].sum() == pytest.approx(0.5)  # source_balance 1: every source the same share
    half = sampling_weights(mods, 0.0, srcs, 0.5)
    assert half[100:].sum() == pytest.approx(10**0.5 / (10**0.5 + 100**0.5))
    assert sampling_weights(mods, 0.0, srcs, 0.0)[100:].sum() == pytest.approx(10 / 110)
    # Modality balance acts within a source: the big source's 10 H&E images get half of its share at 1.
    within = sampling_weights(mods, 1.0, srcs, 1.0)
    assert within[90:100].sum() == pytest.approx(0.25) and within[:90].sum() == pytest.approx(0.25)
    # One source: exactly the modality weights count(modality) ** -balance.
    w = np.array([90**-0.5] * 90 + [20**-0.5] * 20)
    np.testing.assert_allclose(sampling_weights(mods, 0.5), w / w.sum())


def test_amp_on_a_cpu_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    cfg = load_config("unet")
    monkeypatch.setattr(engine, "cpu_bf16_native", lambda: True)
    assert engine.mixed_precision(cfg, torch.device("cpu")) == (True, torch.bfloat16)
    monkeypatch.setattr(engine, "cpu_bf16_native", lambda: False)
    assert engine.mixed_precision(cfg, torch.device("cpu")) == (False, torch.float32)
    off = cfg.replace(optim=type(cfg.optim)(**{**cfg.optim.__dict__, "amp": False}))
    monkeypatch.setattr(engine, "cpu_bf16_native", lambda: True)
    assert engine.mixed_precision(off, torch.device("cpu")) == (False, torch.float32)
    assert engine.mixed_precision(cfg, torch.device("cuda")) == (True, torch.float16)


def test_cpu_bf16_native_reads_the_flags(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not cpu.cpu_bf16_native()
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16", "amx_tile"}))
    assert cpu.cpu_bf16_native()
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert cpu.cpu_bf16_native()


def test_keep_look_spares_stained_images_inversion_and_grey():
    rng = np.random.default_rng(0)
    he = np.stack([np.full((16, 16), 0.9), np.full((16, 16), 0.4), np.full((16, 16), 0.7)], axis=2).astype(np.float32)
    grey = np.repeat(rng.uniform(0, 1, (16, 16, 1)), 3, axis=2).astype(np.float32)
    cfg = AugmentConfig(invert_p=1.0, grayscale_p=1.0, keep_look=True)
    np.testing.assert_array_equal(photometric(np.random.default_rng(1), he, cfg), he)
    np.testing.assert_allclose(photometric(np.random.default_rng(1), grey, cfg), 1.0 - grey, atol=1e-6)
    # Without it the stained image is inverted and greyed, as before.
    plain = photometric(np.random.default_rng(1), he, AugmentConfig(invert_p=1.0, grayscale_p=1.0))
    assert np.allclose(plain, plain.mean(axis=2, keepdims=True)) and plain.mean() == pytest.approx(1 - he.mean(), abs=1e-6)


def test_validation_scores_each_source_and_chooses_on_their_mean():
    lab = np.zeros((40, 80), np.uint32)
    lab[10:30, 10:30], lab[10:30, 50:70] = 1, 2
    def s(i, src):
        return Sample(i, np.zeros((40, 80, 3), np.uint8), lab, Modality.FLUORESCENCE, "t", meta={"source": src})
    samples = [s("a", "big"), s("b", "big"), s("c", "big"), s("d", "small")]
    # The big source is segmented perfectly, the small one not at all.
    preds = {"a": lab, "b": lab, "c": lab, "d": np.zeros_like(lab)}
    result, _ = evaluate_samples(None, samples, None, None, predict=lambda _m, x, _c, _d: preds[x.id])
    cols = engine.source_columns(result)
    assert cols["val_dsb_big"] == pytest.approx(1.0) and cols["val_dsb_small"] == pytest.approx(0.0)
    assert cols["val_dsb_source_mean"] == pytest.approx(0.5)
    assert result.overall["dsb"] == pytest.approx(0.75)
    assert engine.selection_score({"val_dsb": 0.75, **cols}) == pytest.approx(0.5)
    one, _ = evaluate_samples(None, samples[:3], None, None, predict=lambda _m, x, _c, _d: preds[x.id])
    assert engine.source_columns(one) == {} and engine.selection_score({"val_dsb": 0.9}) == 0.9


def write_tissue(root: Path, slides: int = 4, per_slide: int = 2) -> Path:
    """H&E-coloured tiles of 4 round nuclei, tiles named by slide."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:96, :96]
    root.mkdir(parents=True)
    for sl in range(1, slides + 1):
        for k in range(per_slide):
            lab = np.zeros((96, 96), np.uint16)
            for j, (cy, cx) in enumerate(((24, 24), (24, 70), (70, 24), (70, 70))):
                lab[(yy - cy - rng.uniform(-5, 5)) ** 2 + (xx - cx - rng.uniform(-5, 5)) ** 2 <= rng.uniform(7, 11) ** 2] = j + 1
            fg = lab > 0
            img = np.stack([230 - 110 * fg, 200 - 150 * fg, 225 - 60 * fg], axis=2) + rng.normal(0, 6, (96, 96, 1))
            img = np.clip(img, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"slide_{sl:02d}_{k}.png")
            tifffile.imwrite(root / f"slide_{sl:02d}_{k}.labels.tif", lab)
    return root


def test_training_on_a_catalogue_logs_every_source(synth_data, tiny_config, tmp_path):
    write_tissue(tmp_path / "tissue")
    cat = tmp_path / "sources.yaml"
    cat.write_text(f"format: nseg-sources/1\nsources:\n  - {{name: dsb, path: '{synth_data[0]}'}}\n"
                   "  - {name: tissue, path: tissue, modality: histology, group: '^(slide_\\d+)_'}\n")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(tiny_config.read_text().replace("num_workers: 0}", "num_workers: 0, source_balance: 0.5}")
                   .replace("noise: 0.01}", "noise: 0.01, keep_look: true}").replace("epochs: 2", "epochs: 1"))
    splits = tmp_path / "multi.json"
    from nseg_data.cli import app as data_app
    r = CliRunner().invoke(data_app, ["split", str(cat), "--out", str(splits), "--locked", "0.25"])
    assert r.exit_code == 0, r.output
    sp = load_splits(splits)
    assert {sp.source[i] for i in sp["val"]} == {"dsb", "tissue"}
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["unet", "--config", str(cfg), "--data", str(cat), "--splits", str(splits),
                                 "--out", str(out), "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert {"val_dsb_dsb", "val_dsb_tissue", "val_dsb_source_mean"} <= set(rows[-1])
    mean = float(rows[-1]["val_dsb_source_mean"])
    assert mean == pytest.approx((float(rows[-1]["val_dsb_dsb"]) + float(rows[-1]["val_dsb_tissue"])) / 2)
    assert "source tissue" in (out / "val" / "latest.md").read_text()
    # compare on the locked split: a table per source and each source's worst images, every run.
    r = CliRunner().invoke(app, ["compare", str(out), "--split", "locked", "--data", str(cat), "--splits", str(splits),
                                 "--out", str(tmp_path / "cmp"), "--gallery", "2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "### source dsb" in md and "### source tissue" in md
    assert (tmp_path / "cmp" / "worst-tissue.png").stat().st_size > 1000
    assert (tmp_path / "cmp" / "worst-dsb.png").stat().st_size > 1000
    # The sources learnt from travel with the checkpoint (and from there into bundles and packages).
    from nseg_train.checkpoint import load_checkpoint
    assert [d["name"] for d in load_checkpoint(out / "last.pt")["data_sources"]] == ["dsb", "tissue"]


def test_one_nucleus_size_crops_bring_every_image_to_it():
    """`data.min_nucleus_diameter`: crops of an image of 8 px nuclei show them at about 16 px, and
    an image of 32 px nuclei keeps its size; without it each keeps its own size."""
    from nseg_data.size import median_diameter
    from scipy import ndimage as ndi

    from nseg_train.datasets import CropDataset, enlarging_scale, prepare

    def discs(r: int, n: int) -> Sample:
        yy, xx = np.mgrid[:256, :256]
        labels = np.zeros((256, 256), np.uint32)
        step = 256 // n
        for i in range(n * n):
            cy, cx = step // 2 + step * (i // n), step // 2 + step * (i % n)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i + 1
        img = np.repeat((labels > 0)[..., None] * 200, 3, axis=2).astype(np.uint8)
        return Sample(f"r{r}", img, labels, Modality.FLUORESCENCE, f"r{r}.png")

    small, large = discs(4, 16), discs(16, 4)
    base = load_config("unet")
    cfg = base.replace(data=type(base.data)(**{**base.data.__dict__, "min_nucleus_diameter": 16.0, "crop_size": 64,
                                               "crops_per_image": 8}),
                       augment=AugmentConfig(flips=False, rot90=False))
    assert enlarging_scale(small.labels, 16.0) == pytest.approx(16.0 / median_diameter(small.labels))
    assert enlarging_scale(large.labels, 16.0) == 1.0
    assert enlarging_scale(small.labels, None) == 1.0
    for sample, own in ((small, median_diameter(small.labels)), (large, median_diameter(large.labels))):
        for config, want in ((cfg, max(16.0, own)), (base.replace(data=type(base.data)(**{**cfg.data.__dict__,
                                                                             "min_nucleus_diameter": None}),
                                                        augment=cfg.augment), own)):
            ds = CropDataset(prepare([sample], config), config, seed=0)
            sizes = []
            for i in range(len(ds)):
                lab, _ = ndi.label(ds[i][1][0].numpy() > 0.5)
                areas = np.bincount(lab.ravel())[1:]
                if len(areas):  # the largest disc of a crop: the one least cut by its edge
                    sizes.append(np.sqrt(4 * areas.max() / np.pi))
            assert np.median(sizes) == pytest.approx(want, rel=0.2), (sample.id, config.data.min_nucleus_diameter)
