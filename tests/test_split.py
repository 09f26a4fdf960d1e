"""The split stage: grouped (no leakage), stratified, deterministic, hard-linked, and clear when data is short."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from clean_inputs import inside, row, synthetic_rows, write_inputs

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.stages.split import stage as split
from pipeline.stages.split.__main__ import main as split_main

LABELS = ("Hamburger", "Sandwich", "Hot dog")


def run_split(root: Path) -> int:
    with inside(root):
        return run_cli(split_main, [])


def splits_of(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root / paths.SPLITS_MANIFEST)


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A workspace split once: 150 photos of three labels, multi-label photos, near-duplicate pairs, and a
    photo tied to another only through a near duplicate that clean rejected."""
    root = tmp_path_factory.mktemp("split")
    rows = synthetic_rows(150, LABELS) + [
        row(500, 0, "Hamburger", dup_group="via-rejected"),
        row(501, 0, "Hamburger", "near_duplicate", dup_group="via-rejected"),
        row(501, 1, "Sandwich"),
    ]
    write_inputs(root, rows)
    assert run_split(root) == 0
    return root


def test_no_image_in_two_splits(done):
    table = splits_of(done)
    assert len(table) > 250
    assert (table.groupby("ImageID")["split"].nunique() == 1).all()
    multi_label = table.groupby("ImageID")["Label"].nunique()
    assert (multi_label > 1).sum() >= 10  # the data really has photos holding two labels


def test_near_duplicate_groups_stay_together(done):
    table = splits_of(done)
    clean = pd.read_parquet(done / paths.CLEAN_MANIFEST)
    dup_images = clean[clean["dup_group"] != ""].groupby("dup_group")["ImageID"].unique()
    assert sum(len(ids) > 1 for ids in dup_images) >= 10
    split_of = table.drop_duplicates("ImageID").set_index("ImageID")["split"]
    group_of = table.drop_duplicates("ImageID").set_index("ImageID")["group"]
    for ids in dup_images:
        kept = [i for i in ids if i in split_of.index]
        assert split_of[kept].nunique() == 1
        assert group_of[kept].nunique() == 1
    # 0x501's only kept crop is tied to 0x500 through its rejected near duplicate
    assert split_of[f"{500:016x}"] == split_of[f"{501:016x}"]


def test_layout_files_and_labels_json(done):
    table = splits_of(done)
    assert list(table.columns) == ["ImageID", "BoxIndex", "Label", "split", "path", "group"]
    files = {str(p.relative_to(done / paths.SPLITS_DIR)) for p in (done / paths.SPLITS_DIR).glob("*/*/*.jpg")}
    assert files == set(table["path"])
    assert (done / "data/splits/val/Hot_dog").is_dir()
    assert (done / paths.SPLITS_LABELS).read_text().count('"Hot_dog": "Hot dog"') == 1
    clean = pd.read_parquet(done / paths.CLEAN_MANIFEST)
    assert len(table) == int(clean["keep"].sum())  # only kept crops, every one of them


def test_the_dataset_size_is_a_metric(done):
    """metrics/dataset.json (dvc.yaml: the stage's metric) counts what the splits hold, so that dvc exp show
    and dvc metrics diff compare dataset sizes."""
    table = splits_of(done)
    size = json.loads((done / split.DATASET_METRICS).read_text())
    assert size == {"images": len(table), "train": int((table["split"] == "train").sum()),
                    "val": int((table["split"] == "val").sum()), "test": int((table["split"] == "test").sum())}
    assert list(size) == ["images", "train", "val", "test"] and min(size.values()) > 0


@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (0.5, 0.3, 0.2)])
def test_stratification_matches_fractions(tmp_path, fractions):
    write_inputs(tmp_path, synthetic_rows(120, LABELS, seed=3),
                 split=dict(zip(paths.SPLIT_NAMES, fractions), seed=7))
    assert run_split(tmp_path) == 0
    table = splits_of(tmp_path)
    share = pd.crosstab(table["Label"], table["split"], normalize="index")
    for label in LABELS:
        for name, fraction in zip(paths.SPLIT_NAMES, fractions):
            assert abs(share.loc[label, name] - fraction) < 0.05, (label, name, share.loc[label, name])


def test_zero_fraction_split_is_never_used():
    counts = np.array([[3, 0], [1, 1], [0, 2], [2, 0], [1, 0], [0, 1]] * 5)
    choice = split.greedy_assign(counts, np.array([0.8, 0.2, 0.0]), seed=1)
    assert set(choice) == {0, 1}


def test_group_ids_union_find():
    manifest = pd.DataFrame({
        "ImageID": ["c", "b", "b", "a", "d", "e"],
        "dup_group": ["g2", "g1", "g2", "g1", "", ""],
    })
    groups = split.group_ids(manifest)
    assert list(groups) == ["a", "a", "a", "a", "d", "e"]


def test_same_params_give_byte_identical_splits(tmp_path):
    rows = synthetic_rows(60, LABELS, seed=5)
    runs = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        write_inputs(root, rows)
        assert run_split(root) == 0
        runs.append(root)
    a, b = (root / paths.SPLITS_DIR for root in runs)
    assert (a / "splits.parquet").read_bytes() == (b / "splits.parquet").read_bytes()
    assert tree_hashes(a) == tree_hashes(b)
    # and the seed matters: another seed moves groups between splits
    write_inputs(runs[1], rows, split={"seed": 1})
    assert run_split(runs[1]) == 0
    assert set(splits_of(runs[0])["path"]) != set(splits_of(runs[1])["path"])


def test_hard_links_to_the_crops(done):
    table = splits_of(done)
    clean = pd.read_parquet(done / paths.CLEAN_MANIFEST).set_index(["ImageID", "BoxIndex"])
    for r in table.head(20).itertuples():
        linked = (done / paths.SPLITS_DIR / r.path).stat()
        crop = (done / paths.CROPS_DIR / clean.loc[(r.ImageID, r.BoxIndex), "crop_path"]).stat()
        assert (linked.st_ino, linked.st_dev) == (crop.st_ino, crop.st_dev)


def test_copies_where_links_fail(tmp_path, monkeypatch):
    write_inputs(tmp_path, synthetic_rows(20, LABELS))

    def no_links(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    assert run_split(tmp_path) == 0
    first = splits_of(tmp_path).iloc[0]
    copied = tmp_path / paths.SPLITS_DIR / first["path"]
    original = tmp_path / paths.CROPS_DIR / split.label_dirname(first["Label"]) / copied.name
    assert copied.read_bytes() == original.read_bytes()
    assert copied.stat().st_ino != original.stat().st_ino


def test_rerun_removes_stale_files(tmp_path):
    write_inputs(tmp_path, synthetic_rows(30, LABELS))
    assert run_split(tmp_path) == 0
    stale = [tmp_path / "data/splits/train/Hamburger/ffffffffffffffff_0.jpg",
             tmp_path / "data/splits/train/Old_label/ffffffffffffffff_1.jpg",
             tmp_path / paths.DATASET_REPORT / "train_Old_label.png"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"old")
    assert run_split(tmp_path) == 0
    assert not any(path.exists() for path in stale)
    assert not (tmp_path / "data/splits/train/Old_label").exists()
    assert not list((tmp_path / "data").glob(".splits.*"))  # no build folder left behind


def test_too_few_examples_exit_2_one_line(tmp_path):
    rows = synthetic_rows(40, ("Hamburger",)) + [row(900, 0, "Sandwich"), row(901, 0, "Sandwich"),
                                                  row(902, 0, "Sandwich", "corrupt")]
    write_inputs(tmp_path, rows, split={"min_per_label": 5})
    result = subprocess.run([sys.executable, "-m", "pipeline.stages.split"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(split.__file__).parents[3])})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert "\n" not in message
    assert "'Sandwich' has 2" in message and "split.min_per_label is 5" in message
    assert "Hamburger" not in message
    assert not (tmp_path / paths.SPLITS_DIR).exists()  # nothing half-made


def test_label_missing_from_a_split_is_explained(tmp_path, capsys):
    # Sandwich has enough crops, but all in one photo: only one split can have them
    rows = synthetic_rows(40, ("Hamburger",)) + [row(900, box, "Sandwich") for box in range(6)]
    write_inputs(tmp_path, rows, split={"min_per_label": 3})
    assert run_split(tmp_path) == 2
    message = capsys.readouterr().err
    assert "'Sandwich' got no crops in the val split" in message
    assert "6 clean crops" in message and "1 photo group" in message and "split.val" in message


def test_crop_path_outside_the_crops_folder_is_refused(tmp_path, capsys):
    write_inputs(tmp_path, synthetic_rows(30, LABELS))
    manifest = pd.read_parquet(tmp_path / paths.CLEAN_MANIFEST)
    manifest.loc[0, "crop_path"] = "../../../etc/passwd"
    manifest.to_parquet(tmp_path / paths.CLEAN_MANIFEST, index=False)
    assert run_split(tmp_path) == 2
    assert "'../../../etc/passwd'" in capsys.readouterr().err
    assert not (tmp_path / paths.SPLITS_DIR).exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        split_main(["--help"])
    assert exit_info.value.code == 0
    assert "params.yaml" in capsys.readouterr().out


def test_the_audits_rejected_crops_are_left_out(tmp_path, capsys):
    rows = synthetic_rows(60, LABELS, seed=2)
    rows[0] = {**rows[0], "audit": "label_issue"}
    rows[5] = {**rows[5], "audit": "dark"}
    write_inputs(tmp_path, rows)
    assert run_split(tmp_path) == 0
    placed = set(zip(splits_of(tmp_path)["ImageID"], splits_of(tmp_path)["BoxIndex"]))
    assert (rows[0]["ImageID"], rows[0]["BoxIndex"]) not in placed
    assert (rows[5]["ImageID"], rows[5]["BoxIndex"]) not in placed
    assert len(placed) == len(rows) - 2


def test_one_photographers_photos_share_a_split(tmp_path, capsys):
    # 90 photos by 30 authors; without author grouping their photos scatter over all three splits
    rows = [{**r, "author": f"https://www.flickr.com/people/a{int(r['ImageID'], 16) % 30}/"}
            for r in synthetic_rows(90, LABELS, seed=3)]
    write_inputs(tmp_path, rows)
    assert run_split(tmp_path) == 0
    table = splits_of(tmp_path)
    author = table["ImageID"].map(lambda i: int(i, 16) % 30)
    assert (table.groupby(author)["split"].nunique() == 1).all()
    prevented = int(capsys.readouterr().out.split("grouping by author kept ")[1].split()[0])
    assert prevented > 0


def test_author_grouping_can_be_turned_off(tmp_path, capsys):
    rows = [{**r, "author": f"a{int(r['ImageID'], 16) % 12}"} for r in synthetic_rows(90, LABELS, seed=3)]
    write_inputs(tmp_path, rows, split={"group_by_author": False})
    assert run_split(tmp_path) == 0
    table = splits_of(tmp_path)
    assert (table.groupby(table["ImageID"].map(lambda i: int(i, 16) % 12))["split"].nunique() > 1).any()
    assert "grouping by author" not in capsys.readouterr().out


def straddling(table: pd.DataFrame, author: pd.Series) -> tuple[set, set, set]:
    """(authors in more than one split, their photos, authors in train and test) of a split table."""
    spans = table.groupby(author)["split"].agg(set)
    across = {a for a, s in spans.items() if len(s) > 1}
    return across, set(table.loc[author.isin(across), "ImageID"]), {a for a, s in spans.items() if {"train", "test"} <= s}


def test_leak_report_counts_what_author_grouping_prevented_and_its_balance_cost(tmp_path):
    rows = [{**r, "author": f"a{int(r['ImageID'], 16) % 30}"} for r in synthetic_rows(90, LABELS, seed=3)]
    off, on = tmp_path / "off", tmp_path / "on"
    for root, grouped in ((off, False), (on, True)):
        root.mkdir()
        write_inputs(root, rows, split={"group_by_author": grouped})
        assert run_split(root) == 0
    assert json.loads((off / "metrics/split.json").read_text()) == {"group_by_author": False}
    leaks = json.loads((on / "metrics/split.json").read_text())
    photo_only = splits_of(off)  # the split the same data gets without author grouping
    across, photos, train_test = straddling(photo_only, photo_only["ImageID"].map(lambda i: f"a{int(i, 16) % 30}"))
    assert across and leaks["authors"] == 30
    assert leaks["prevented"] == {
        "authors_across_splits": len(across), "photos_across_splits": len(photos),
        "crops_across_splits": int(photo_only["ImageID"].isin(photos).sum()),
        "authors_in_train_and_test": len(train_test),
        "photos_in_train_and_test": photo_only.loc[photo_only["ImageID"].map(
            lambda i: f"a{int(i, 16) % 30}").isin(train_test), "ImageID"].nunique(),
    }
    for name, table in (("grouped", splits_of(on)), ("photo_only", photo_only)):
        share = pd.crosstab(table["Label"], table["split"], normalize="index")
        for label in LABELS:
            for s in ("train", "val", "test"):
                assert leaks["fractions"][name][label][s] == pytest.approx(share.loc[label, s], abs=1e-4)
        gap = max(abs(share.loc[label, s] - f) for label in LABELS
                  for s, f in (("train", 0.7), ("val", 0.15), ("test", 0.15)))
        assert leaks["largest_gap"][name] == pytest.approx(gap, abs=1e-4)
    page = (on / paths.DATASET_REPORT / "index.html").read_text()
    assert f"Grouping by photographer kept <strong>{len(across)}</strong> of 30 authors" in page
