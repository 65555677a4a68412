"""Every input form on synthetic data, and every bad input naming its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from nseg_data_synth import (
    expected_labels,
    kaggle_files,
    mask_png,
    png_bytes,
    rle_csv_text,
    synthetic,
    write_files,
    zip_bytes,
)

from nseg_data.dataset import detect_form, load_kaggle_folder, open_dataset
from nseg_data.errors import DataError
from nseg_data.readers import kaggle_zip, label_folder, rle_csv, stage1_test
from nseg_data.readers.kaggle_folder import iter_kaggle_folder
from nseg_data.sample import Modality, Sample


def samples_of(items) -> dict[str, Sample]:
    items = list(items)
    errors = [i for i in items if isinstance(i, DataError)]
    assert not errors, errors
    return {s.id: s for s in items}


def check_canonical(s: Sample, seed: int) -> None:
    assert s.image.dtype == np.uint8 and s.image.shape == (24, 32, 3)
    assert s.labels is not None and s.labels.dtype == np.uint32
    assert np.array_equal(s.labels, expected_labels(seed))
    assert s.modality == Modality.FLUORESCENCE
    assert s.source


def test_kaggle_folder(kaggle_dir):
    got = samples_of(iter_kaggle_folder(kaggle_dir))
    assert sorted(got) == ["img_a", "img_b"]
    check_canonical(got["img_a"], 0)
    check_canonical(got["img_b"], 1)
    assert detect_form(kaggle_dir) == "kaggle_folder"


def test_nested_competition_zip_png_masks(competition_zip):
    got = samples_of(kaggle_zip.iter_kaggle_zip(competition_zip))
    check_canonical(got["img_a"], 0)
    check_canonical(got["img_b"], 1)
    # Provenance points into the nested archive.
    assert "stage1_train.zip!img_a" in got["img_a"].source
    assert detect_form(competition_zip) == "kaggle_zip"


def test_nested_competition_zip_csv_masks(competition_zip):
    got = samples_of(kaggle_zip.iter_kaggle_zip(competition_zip, masks_from="csv"))
    check_canonical(got["img_b"], 1)
    assert "stage1_train_labels.csv" in got["img_b"].meta["mask_source"]


def test_nested_competition_zip_stage1_test_with_solution(competition_zip):
    got = samples_of(kaggle_zip.iter_kaggle_zip(competition_zip, part="stage1_test"))
    check_canonical(got["t1"], 0)
    assert got["t1"].meta["usage"] == "Public"


def test_rle_csv_with_folder_images(tmp_path):
    write_files(tmp_path / "stage1_train", {k: v for k, v in kaggle_files().items() if "/masks/" not in k})
    csv = tmp_path / "stage1_train_labels.csv"
    csv.write_text(rle_csv_text())
    got = samples_of(rle_csv.iter_rle_csv(csv))  # images found as the sibling folder
    check_canonical(got["img_a"], 0)
    assert detect_form(csv) == "rle_csv"
    res = open_dataset(csv)
    assert res.form == "rle_csv" and len(res.samples) == 2 and not res.errors


def test_rle_csv_overrides_png_masks(kaggle_dir, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text(rle_csv_text(("img_a",)))
    res = open_dataset(kaggle_dir, labels_csv=csv)
    assert res.form == "rle_csv"
    # img_b has an image but no rows: reported, not dropped.
    assert [s.id for s in res.samples] == ["img_a"]
    assert len(res.errors) == 1 and "labels.csv" in str(res.errors[0]) and "img_b" in str(res.errors[0])


def test_stage1_test_folder_with_solution(tmp_path):
    test_dir = write_files(tmp_path / "stage1_test", {k: v for k, v in kaggle_files(("t1",)).items() if "/masks/" not in k})
    (tmp_path / "stage1_solution.csv").write_text(rle_csv_text(("t1",), solution=True))
    got = samples_of(stage1_test.iter_stage1_test(test_dir))
    check_canonical(got["t1"], 0)
    assert detect_form(test_dir) == "stage1_test"
    assert open_dataset(tmp_path / "stage1_solution.csv").samples[0].id == "t1"


def test_stage1_test_without_solution_is_unlabelled(tmp_path):
    test_dir = write_files(tmp_path / "stage1_test", {k: v for k, v in kaggle_files(("t1",)).items() if "/masks/" not in k})
    got = samples_of(stage1_test.iter_stage1_test(test_dir))
    assert got["t1"].labels is None


def test_label_folder_nseg_and_cellpose(tmp_path):
    img0, _ = synthetic(0)
    img1, _ = synthetic(1)
    d = tmp_path / "labelled"
    d.mkdir()
    (d / "a.png").write_bytes(png_bytes(img0))
    tifffile.imwrite(d / "a.labels.tif", expected_labels(0).astype(np.uint16))
    (d / "b.png").write_bytes(png_bytes(img1))
    (d / "b_masks.png").write_bytes(png_bytes(expected_labels(1).astype(np.uint16)))
    got = samples_of(label_folder.iter_label_folder(d))
    check_canonical(got["a"], 0)
    check_canonical(got["b"], 1)
    assert detect_form(d) == "label_folder"


def test_conversions_rgba_gray_16bit(tmp_path):
    d = tmp_path / "conv"
    d.mkdir()
    gray = np.zeros((8, 8), np.uint8)
    gray[2:5, 2:5] = 200
    (d / "g.png").write_bytes(png_bytes(gray))
    g16 = gray.astype(np.uint16) * 200
    tifffile.imwrite(d / "h.tif", g16)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    (d / "r.png").write_bytes(png_bytes(rgba))
    lab = (gray > 0).astype(np.uint16)
    for n in ("g", "h", "r"):
        tifffile.imwrite(d / f"{n}.labels.tif", lab)
    got = samples_of(label_folder.iter_label_folder(d))
    for s in got.values():
        assert s.image.shape == (8, 8, 3) and s.image.dtype == np.uint8
        assert s.image[3, 3, 0] > 150 and s.image[0, 0, 0] < 50
        assert np.array_equal(s.image[..., 0], s.image[..., 2])


def test_cache_round_trip_and_invalidation(kaggle_dir, tmp_path):
    cache = tmp_path / "cache"
    first = open_dataset(kaggle_dir, cache_dir=cache)
    second = open_dataset(kaggle_dir, cache_dir=cache)
    assert (first.cached, second.cached) == (0, 2)
    for a, b in zip(first.samples, second.samples, strict=True):
        assert a.id == b.id and np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
        assert b.labels.dtype == np.uint32 and b.modality == a.modality
    # load_kaggle_folder (the Kaggle layout without detection) shares the same cache files.
    assert load_kaggle_folder(kaggle_dir, cache_dir=cache).cached == 2
    # Editing one mask invalidates that sample only.
    m = kaggle_dir / "img_a" / "masks" / "m0.png"
    m.write_bytes(mask_png(np.zeros((24, 32), bool)))
    third = open_dataset(kaggle_dir, cache_dir=cache)
    assert third.cached == 1
    assert third.by_id()["img_a"].meta["empty_masks"]


def test_cache_of_zip_form(competition_zip, tmp_path):
    cache = tmp_path / "c"
    assert open_dataset(competition_zip, cache_dir=cache).cached == 0
    again = open_dataset(competition_zip, cache_dir=cache)
    assert again.cached == 2 and again.form == "kaggle_zip"


def test_corrupt_cache_file_is_redecoded(kaggle_dir, tmp_path):
    cache = tmp_path / "cache"
    open_dataset(kaggle_dir, cache_dir=cache)
    for f in cache.glob("*.npz"):
        f.write_bytes(b"garbage")
    res = open_dataset(kaggle_dir, cache_dir=cache)
    assert res.cached == 0 and len(res.samples) == 2


# ---- bad input: a DataError naming the file, nothing dropped ----


def one_error(res) -> str:
    assert len(res.errors) == 1, res.errors
    return str(res.errors[0])


def test_missing_masks_folder(kaggle_dir):
    for f in (kaggle_dir / "img_b" / "masks").iterdir():
        f.unlink()
    (kaggle_dir / "img_b" / "masks").rmdir()
    res = open_dataset(kaggle_dir)
    assert "img_b/masks" in one_error(res) and "missing" in one_error(res)
    assert [s.id for s in res.samples] == ["img_a"]


def test_corrupt_png(kaggle_dir):
    (kaggle_dir / "img_a" / "masks" / "m1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert "img_a/masks/m1.png" in one_error(open_dataset(kaggle_dir))


def test_truncated_image_png(kaggle_dir):
    p = kaggle_dir / "img_b" / "images" / "img_b.png"
    p.write_bytes(p.read_bytes()[:60])
    assert "img_b/images/img_b.png" in one_error(open_dataset(kaggle_dir))


def test_mask_of_other_size(kaggle_dir):
    (kaggle_dir / "img_a" / "masks" / "m2.png").write_bytes(mask_png(np.ones((10, 10), bool)))
    msg = one_error(open_dataset(kaggle_dir))
    assert "img_a/masks/m2.png" in msg and "10x10" in msg


def test_mask_of_other_size_in_zip(tmp_path):
    files = kaggle_files(("z1",))
    files["z1/masks/m0.png"] = mask_png(np.ones((5, 5), bool))
    p = tmp_path / "outer.zip"
    p.write_bytes(zip_bytes({"stage1_train.zip": zip_bytes(files)}))
    msg = one_error(open_dataset(p))
    assert "outer.zip!stage1_train.zip!z1/masks/m0.png" in msg


def test_rle_past_image_end(tmp_path):
    write_files(tmp_path / "stage1_train", {k: v for k, v in kaggle_files(("img_a",)).items() if "/masks/" not in k})
    csv = tmp_path / "stage1_train_labels.csv"
    csv.write_text("ImageId,EncodedPixels\nimg_a,1 5\nimg_a,700 100\n")
    msg = one_error(open_dataset(csv))
    assert "stage1_train_labels.csv line 3" in msg and "past the end" in msg


def test_csv_missing_columns(tmp_path):
    write_files(tmp_path / "stage1_train", {k: v for k, v in kaggle_files(("img_a",)).items() if "/masks/" not in k})
    csv = tmp_path / "stage1_train_labels.csv"
    csv.write_text("Id,Pixels\nimg_a,1 5\n")
    with pytest.raises(DataError, match=r"stage1_train_labels\.csv.*missing column"):
        rle_csv.entries(csv)


def test_csv_id_without_image(tmp_path):
    write_files(tmp_path / "stage1_train", {k: v for k, v in kaggle_files(("img_a",)).items() if "/masks/" not in k})
    csv = tmp_path / "stage1_train_labels.csv"
    csv.write_text(rle_csv_text(("img_a",)) + "ghost,1 3\n")
    msg = one_error(open_dataset(csv))
    assert "stage1_train_labels.csv" in msg and "ghost" in msg


def test_solution_size_mismatch(tmp_path):
    test_dir = write_files(tmp_path / "stage1_test", {k: v for k, v in kaggle_files(("t1",)).items() if "/masks/" not in k})
    (tmp_path / "stage1_solution.csv").write_text(rle_csv_text(("t1",), solution=True).replace(",24,32,", ",32,24,"))
    msg = one_error(open_dataset(test_dir))
    assert "stage1_solution.csv" in msg and "24x32" in msg


def test_not_a_zip(tmp_path):
    p = tmp_path / "broken.zip"
    p.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataError, match=r"broken\.zip"):
        kaggle_zip.entries(p)


def test_corrupt_inner_zip(tmp_path):
    p = tmp_path / "outer.zip"
    p.write_bytes(zip_bytes({"stage1_train.zip": b"garbage"}))
    with pytest.raises(DataError, match=r"outer\.zip!stage1_train\.zip"):
        open_dataset(p)


def test_label_image_other_size(tmp_path):
    d = tmp_path / "lf"
    d.mkdir()
    (d / "a.png").write_bytes(png_bytes(synthetic(0)[0]))
    tifffile.imwrite(d / "a.labels.tif", np.zeros((5, 5), np.uint16))
    msg = one_error(open_dataset(d))
    assert "a.labels.tif" in msg and "5x5" in msg


def test_label_folder_orphans_and_unlabelled(tmp_path):
    d = tmp_path / "lf"
    d.mkdir()
    (d / "a.png").write_bytes(png_bytes(synthetic(0)[0]))
    tifffile.imwrite(d / "a.labels.tif", expected_labels(0).astype(np.uint16))
    (d / "b.png").write_bytes(png_bytes(synthetic(1)[0]))  # no labels
    tifffile.imwrite(d / "c.labels.tif", expected_labels(0).astype(np.uint16))  # no image
    res = open_dataset(d)
    msgs = " | ".join(str(e) for e in res.errors)
    assert len(res.errors) == 2 and "b.png" in msgs and "c.labels.tif" in msgs
    assert [s.id for s in res.samples] == ["a"]


def test_unknown_form(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match=r"x\.txt"):
        open_dataset(tmp_path / "x.txt")


def test_requested_ids_must_exist(kaggle_dir):
    with pytest.raises(DataError, match="not in the dataset"):
        open_dataset(kaggle_dir, ids=["nope"])
    assert [s.id for s in open_dataset(kaggle_dir, ids=["img_b"]).samples] == ["img_b"]


def test_overlap_and_empty_masks_recorded(kaggle_dir):
    m = np.zeros((24, 32), bool)
    m[4:8, 4:8] = True  # overlaps disk m0 at (6, 6)
    (kaggle_dir / "img_a" / "masks" / "m3.png").write_bytes(mask_png(m))
    (kaggle_dir / "img_a" / "masks" / "m4.png").write_bytes(mask_png(np.zeros((24, 32), bool)))
    s = open_dataset(kaggle_dir).by_id()["img_a"]
    assert s.meta["overlap_pixels"] > 0
    assert any(Path(n).name == "m0.png" for n in s.meta["overlapping_masks"])
    assert [Path(n).name for n in s.meta["empty_masks"]] == ["m4.png"]
