"""Splits: deterministic, stratified by modality, persisted and verified."""

from __future__ import annotations

import json

import pytest

from nseg_data.errors import DataError
from nseg_data.split import SMALL_DATASET, load_splits, make_splits, save_splits, training_splits


def modalities() -> dict[str, str]:
    mods = {f"f{i:03d}": "fluorescence" for i in range(80)}
    mods |= {f"h{i:03d}": "histology" for i in range(16)}
    mods |= {f"b{i:03d}": "brightfield" for i in range(4)}
    return mods


def test_deterministic_and_seed_dependent():
    a, b = make_splits(modalities(), seed=7), make_splits(modalities(), seed=7)
    assert a.ids == b.ids and a.sha256() == b.sha256()
    assert make_splits(modalities(), seed=8).ids != a.ids


def test_independent_of_input_order():
    mods = modalities()
    rev = dict(reversed(list(mods.items())))
    assert make_splits(rev).ids == make_splits(mods).ids


def test_fractions_and_stratification():
    s = make_splits(modalities())
    tab = s.table()
    assert tab["locked"]["fluorescence"] == 8 and tab["locked"]["histology"] == 2
    assert tab["val"]["fluorescence"] == round(72 * 0.3)
    # Every modality, even one with 4 images, appears in every split.
    for name in ("locked", "val", "train"):
        assert tab[name]["brightfield"] >= 1
    assert sum(tab[n]["total"] for n in tab) == 100
    assert set(s["all"]) == set(modalities())
    assert "brightfield" in s.format_table().splitlines()[0]


def test_adding_a_modality_does_not_move_others():
    base = make_splits(modalities())
    more = modalities() | {f"x{i}": "other" for i in range(10)}
    grown = make_splits(more)
    for name in ("locked", "val", "train"):
        assert set(base[name]) <= set(grown[name])


def test_persist_round_trip(tmp_path):
    s = make_splits(modalities())
    p = tmp_path / "splits.json"
    save_splits(s, p)
    back = load_splits(p)
    assert back.ids == s.ids and back.modality == s.modality and back.sha256() == s.sha256()
    assert json.loads(p.read_text())["format"] == "nseg-splits/1"


def test_edited_file_is_rejected(tmp_path):
    p = tmp_path / "splits.json"
    save_splits(make_splits(modalities()), p)
    d = json.loads(p.read_text())
    d["splits"]["train"].append(d["splits"]["locked"].pop())
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"splits\.json"):
        load_splits(p)


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", '{"format": "nseg-splits/1", "seed": null}'])
def test_bad_splits_file_names_it(tmp_path, text):
    p = tmp_path / "splits.json"
    p.write_text(text)
    with pytest.raises(DataError, match=r"splits\.json"):
        load_splits(p)


@pytest.mark.parametrize(("mods", "want"), [
    # 5 or 6 images of one look: no locked set, a quarter (rounded, at least 1) for validation.
    ({f"a{i}": "fluorescence" for i in range(5)}, {"locked": 0, "val": 1, "train": 4}),
    ({f"a{i}": "fluorescence" for i in range(6)}, {"locked": 0, "val": 2, "train": 4}),
    # Rounding per modality leaves val empty here (2 + 1 + 1 images); one image moves over.
    ({"f1": "fluorescence", "f2": "fluorescence", "h1": "histology", "b1": "brightfield"},
     {"locked": 0, "val": 1, "train": 3}),
    ({"f1": "fluorescence", "h1": "histology"}, {"locked": 0, "val": 1, "train": 1}),
])
def test_training_splits_of_a_small_folder_have_train_and_val_and_no_locked_set(mods, want):
    s = training_splits(mods)
    assert {n: len(s[n]) for n in ("locked", "val", "train")} == want
    assert sorted(s["all"]) == sorted(mods) and s.locked_fraction == 0.0
    assert training_splits(dict(reversed(list(mods.items())))).ids == s.ids


def test_training_splits_keep_a_locked_set_from_small_dataset_size_on():
    mods = {f"a{i:02d}": "fluorescence" for i in range(SMALL_DATASET)}
    s = training_splits(mods)
    assert s.ids == make_splits(mods).ids and len(s["locked"]) == 2


def test_training_splits_refuse_a_single_image():
    with pytest.raises(ValueError, match="at least 2"):
        training_splits({"only": "fluorescence"})
