"""Several sources as one data set: the catalogue, tagging through the cache, grouped splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from nseg_data_synth import kaggle_files, synthetic, write_files
from PIL import Image
from typer.testing import CliRunner

from nseg_data.cli import app
from nseg_data.dataset import detect_form, open_dataset
from nseg_data.errors import DataError
from nseg_data.sources import group_of, load_catalogue, source_of
from nseg_data.split import load_splits, make_group_splits, make_splits, save_splits


def label_folder(root: Path, names: list[str], colour: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        img, masks = synthetic(k)
        rgb = img[..., :3].copy()
        if colour:  # an H&E-like tint, so the inferred modality would be histology anyway
            rgb[..., 0] = np.clip(rgb[..., 0].astype(int) + 60, 0, 255)
        lab = np.zeros(rgb.shape[:2], np.uint16)
        for j, m in enumerate(masks):
            lab[m] = j + 1
        Image.fromarray(rgb).save(root / f"{name}.png")
        tifffile.imwrite(root / f"{name}.labels.tif", lab)
    return root


def catalogue(tmp_path: Path, extra: str = "") -> Path:
    write_files(tmp_path / "dsb", kaggle_files(("a1", "a2", "a3")))
    label_folder(tmp_path / "tissue", [f"t_{s:02d}_{i}" for s in (1, 2, 3, 4) for i in (1, 2)], colour=True)
    label_folder(tmp_path / "lab", ["w1_f1", "w1_f2", "w2_f1"])
    cat = tmp_path / "sources.yaml"
    cat.write_text(
        "format: nseg-sources/1\nsources:\n"
        "  - {name: dsb, path: dsb}\n"
        "  - {name: tissue, path: tissue, modality: histology, pixel_size_um: 0.25, group: '^(t_\\d+)_'}\n"
        f"  - {{name: lab, path: lab, modality: brightfield, group: '^(w\\d+)_'}}\n{extra}"
    )
    return cat


def test_catalogue_reads_every_source_tagged(tmp_path):
    cat = catalogue(tmp_path)
    assert detect_form(cat) == "sources"
    res = open_dataset(cat)
    assert not res.errors
    by = res.by_id()
    assert len(by) == 3 + 8 + 3
    assert {source_of(s) for s in res.samples} == {"dsb", "tissue", "lab"}
    assert group_of(by["t_03_2"]) == "tissue:t_03" and group_of(by["w1_f2"]) == "lab:w1"
    assert group_of(by["a2"]) == "dsb:a2"  # no rule: each image its own group
    assert by["t_01_1"].meta["pixel_size_um"] == 0.25
    # Declared modality wins over the image's look (these lab images are dark, i.e. "fluorescence").
    assert str(by["w1_f1"].modality) == "brightfield" and str(by["a1"].modality) == "fluorescence"


def test_declared_modality_and_tags_survive_the_cache(tmp_path):
    cat = catalogue(tmp_path)
    first = open_dataset(cat, cache_dir=tmp_path / "cache")
    again = open_dataset(cat, cache_dir=tmp_path / "cache")
    assert again.cached == len(first.samples) == 14
    s = again.by_id()["w2_f1"]
    assert str(s.modality) == "brightfield" and source_of(s) == "lab" and group_of(s) == "lab:w2"


def test_catalogue_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: nseg-sources/1\nsources:\n  - {name: x, path: nowhere, modality: plasma}\n")
    with pytest.raises(DataError, match=r"bad.yaml.*modality must be one of"):
        load_catalogue(bad)
    bad.write_text("format: nseg-sources/1\nsources:\n  - {name: x, path: a, colour: red}\n")
    with pytest.raises(DataError, match="unknown key"):
        load_catalogue(bad)
    bad.write_text("format: nseg-sources/1\nsources:\n  - {name: x, path: a, group: 'no_group'}\n")
    with pytest.raises(DataError, match="capturing group"):
        load_catalogue(bad)


def test_same_id_in_two_sources_is_refused(tmp_path):
    cat = catalogue(tmp_path, extra="  - {name: dup, path: lab}\n")
    with pytest.raises(DataError, match="'w1_f1' is in both source lab and source dup"):
        open_dataset(cat)


def test_a_name_outside_the_group_rule_fails_alone(tmp_path):
    cat = catalogue(tmp_path)
    label_folder(tmp_path / "tissue", ["stray"], colour=True)
    res = open_dataset(cat)
    assert len(res.samples) == 14
    assert len(res.errors) == 1 and "stray" in str(res.errors[0]) and "group rule" in str(res.errors[0])


def test_group_splits_keep_slides_together_and_every_source_validated():
    items = {}
    for s in range(8):  # 8 slides of 2-4 tiles
        for i in range(2 + s % 3):
            items[f"t_{s}_{i}"] = ("tissue", f"tissue:t_{s}", "histology")
    for i in range(40):
        items[f"d{i}"] = ("dsb", f"dsb:d{i}", "fluorescence" if i % 4 else "histology")
    sp = make_group_splits(items, seed=3)
    for name in ("locked", "val", "train"):
        srcs = {items[i][0] for i in sp[name]}
        assert srcs == {"tissue", "dsb"}, (name, srcs)
    slides = {name: {items[i][1] for i in sp[name] if items[i][0] == "tissue"} for name in ("locked", "val", "train")}
    assert not (slides["locked"] & slides["val"]) and not (slides["val"] & slides["train"])
    assert not (slides["locked"] & slides["train"])
    assert sum(len(v) for v in slides.values()) == 8
    assert make_group_splits(items, seed=3).sha256() == sp.sha256()


def test_group_splits_keep_an_existing_split(tmp_path):
    dsb = {f"d{i}": "fluorescence" for i in range(30)}
    base = make_splits(dsb, seed=1)
    items = {i: ("dsb", f"dsb:{i}", m) for i, m in dsb.items()}
    items.update({f"t_{s}_{i}": ("tissue", f"tissue:t_{s}", "histology") for s in range(5) for i in range(3)})
    sp = make_group_splits(items, keep=base)
    for name in ("locked", "val", "train"):
        assert set(base[name]) <= set(sp[name])
    # Saved and loaded with its sources and groups; a straddling group is refused.
    save_splits(sp, tmp_path / "s.json")
    back = load_splits(tmp_path / "s.json")
    assert back.source == sp.source and back.group == sp.group and back.sha256() == sp.sha256()
    data = json.loads((tmp_path / "s.json").read_text())
    moved = data["splits"]["train"].pop(data["splits"]["train"].index(next(i for i in data["splits"]["train"] if i.startswith("t_"))))
    data["splits"]["val"].append(moved)
    data.pop("sha256")
    (tmp_path / "s.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="must stay together"):
        load_splits(tmp_path / "s.json")


def test_split_cli_on_a_catalogue(tmp_path):
    cat = catalogue(tmp_path)
    out = tmp_path / "multi.json"
    r = CliRunner().invoke(app, ["split", str(cat), "--out", str(out), "--locked", "0.2"])
    assert r.exit_code == 0, r.output
    assert "tissue:histology" in r.output and "lab:brightfield" in r.output
    sp = load_splits(out)
    assert set(sp.source.values()) == {"dsb", "tissue", "lab"}
    tissue_val = {sp.group[i] for i in sp["val"] if sp.source[i] == "tissue"}
    tissue_train = {sp.group[i] for i in sp["train"] if sp.source[i] == "tissue"}
    assert tissue_val and tissue_train and not tissue_val & tissue_train
