"""The select stage: label rules on a hand-made cache, and metadata + select end to end against the mirror."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.core.base import manifests
from pipeline.core.base.params import load_params
from pipeline.core.base.paths import METADATA_RAW, SELECTED
from pipeline.core.net.sources import layout
from pipeline.mirror import Mirror
from pipeline.stages.metadata import stage as metadata
from pipeline.stages.metadata.__main__ import main as metadata_main
from pipeline.stages.select.__main__ import main as select_main

SAMPLES = Path(__file__).parent / "fixtures" / "openimages-samples"
HAMBURGER, SANDWICH, SUBMARINE, HOT_DOG = "/m/0cdn1", "/m/0l515", "/m/06pcq", "/m/01b9xk"
BOX_HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
              "IsDepiction,IsInside\n")
IMAGE_HEADER = ("ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,OriginalSize,"
                "OriginalMD5,Thumbnail300KURL,Rotation\n")
NO_FILTERS = {"exclude_group_of": False, "exclude_depiction": False, "exclude_occluded": False,
              "exclude_truncated": False, "min_box_area": 0.0, "limit_per_label": 0}


def image_id(n: int) -> str:
    return f"{n:016x}"


def box(n: int, mid: str, area: float = 0.25, occluded: int = 0, truncated: int = 0, group: int = 0,
        depiction: int = 0) -> str:
    side = math.sqrt(area)
    return f"{image_id(n)},xclick,{mid},1,0.1,{0.1 + side:.6f},0.2,{0.2 + side:.6f},{occluded},{truncated},{group},{depiction},0\n"


def image(n: int, subset: str, rotation: str = "0.0") -> str:
    return (f"{image_id(n)},{subset},https://farm1.staticflickr.com/1/{n}_s_o.jpg,https://www.flickr.com/photos/u/{n},"
            f"https://creativecommons.org/licenses/by/2.0/,https://www.flickr.com/people/u/,Ann,\"Lunch, {n}\","
            f"{1000 + n},{'A' * 22}==,https://c1.staticflickr.com/1/{n}_z.jpg,{rotation}\n")


#: (image, label, options) of every train box; the row number is the box's BoxIndex
TRAIN_BOXES = [
    (1, HAMBURGER, {}),
    (2, HAMBURGER, {"group": 1}),
    (3, HAMBURGER, {"group": -1, "depiction": -1, "occluded": -1, "truncated": -1}),
    (4, HAMBURGER, {"depiction": 1}),
    (5, HAMBURGER, {"area": 0.0001}),
    (6, HAMBURGER, {"occluded": 1}),
    (7, HAMBURGER, {"truncated": 1}),
    (8, SUBMARINE, {}),
    (9, HOT_DOG, {}),
    *[(10 + i, SANDWICH, {"area": 0.05 + i / 100}) for i in range(30)],
    (1, SANDWICH, {}),  # an image with a hamburger and a sandwich
]
VALIDATION_BOXES = [(100, HAMBURGER, {}), (101, SANDWICH, {"group": 1})]
NO_IMAGE_ROW = 999  # a box whose image is missing from the image table


@pytest.fixture
def cache(workspace, capsys) -> Path:
    """A small v6 metadata cache built by the metadata stage from hand-written raw files (no download)."""
    lay = layout("v6")
    raw = METADATA_RAW
    for rel in lay.files(["train", "validation"]):
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLES / "class-descriptions-boxable.v5.food-rows.csv", raw / lay.classes)
    shutil.copy(SAMPLES / "bbox_labels_600_hierarchy.json", raw / lay.hierarchy)
    (raw / lay.boxes["train"]).write_text(
        BOX_HEADER + "".join(box(n, mid, **opts) for n, mid, opts in TRAIN_BOXES) + box(NO_IMAGE_ROW, HAMBURGER))
    (raw / lay.boxes["validation"]).write_text(BOX_HEADER + "".join(box(n, mid, **o) for n, mid, o in VALIDATION_BOXES))
    train_images = sorted({n for n, _, _ in TRAIN_BOXES})
    (raw / lay.images["train"]).write_text(
        IMAGE_HEADER + "".join(image(n, "train", "" if n == 8 else "90.0" if n == 1 else "0.0") for n in train_images))
    (raw / lay.images["validation"]).write_text(IMAGE_HEADER + "".join(image(n, "validation") for n, _, _ in VALIDATION_BOXES))
    metadata.run(load_params(overrides={"source.base_url": "http://127.0.0.1:9/unused",
                                        "source.subsets": ["train", "validation"], "labels": ["Hamburger"]}))
    capsys.readouterr()
    return workspace.path


def run_select(workspace, labels=("Hamburger", "Sandwich"), **options: object) -> pd.DataFrame:
    workspace.write_params({"labels": list(labels), "select": {**NO_FILTERS, **options}})
    assert select_main([]) == 0
    return pq.read_table(SELECTED).to_pandas()


def keys(frame: pd.DataFrame, label: str | None = None) -> set[tuple[str, int]]:
    rows = frame if label is None else frame[frame.Label == label]
    return {(r.ImageID, r.BoxIndex) for r in rows.itertuples()}


def train(*indices: int) -> set[tuple[str, int]]:
    return {(image_id(TRAIN_BOXES[i][0]), i) for i in indices}


def test_output_has_the_contract_columns_and_one_row_per_box(cache: Path, workspace) -> None:
    frame = run_select(workspace)
    assert list(frame.columns) == list(manifests.SELECTED.columns)
    assert len(frame) == len(frame.drop_duplicates(["Subset", "ImageID", "BoxIndex"]))
    assert len(frame[frame.Label == "Hamburger"]) == 7 + 1 + 1  # 7 train, 1 without image row, 1 validation
    assert len(frame[frame.Label == "Sandwich"]) == 30 + 1 + 1 + 1  # 30 + image 1 + submarine + validation


def test_image_columns_are_joined_on_image_id(cache: Path, workspace) -> None:
    frame = run_select(workspace).set_index(["Subset", "ImageID", "BoxIndex"])
    first = frame.loc[("train", image_id(1), 0)]
    assert first.OriginalURL == "https://farm1.staticflickr.com/1/1_s_o.jpg" and first.Title == "Lunch, 1"
    assert (first.OriginalSize, first.OriginalMD5, first.Rotation) == (1001, "A" * 22 + "==", 90.0)
    assert first.License == "https://creativecommons.org/licenses/by/2.0/" and first.Author == "Ann"
    assert math.isnan(frame.loc[("train", image_id(8), 7)].Rotation)  # empty Rotation in the image table
    assert pd.isna(frame.loc[("train", image_id(NO_IMAGE_ROW), len(TRAIN_BOXES))].OriginalURL)


def test_rows_are_ordered_by_label_subset_image_and_box(cache: Path, workspace) -> None:
    frame = run_select(workspace, labels=("Sandwich", "Hamburger"))
    assert frame.Label.tolist() == sorted(frame.Label, key=["Sandwich", "Hamburger"].index)
    for _, group in frame.groupby("Label", sort=False):
        assert list(zip(group.Subset, group.ImageID, group.BoxIndex)) == sorted(zip(group.Subset, group.ImageID, group.BoxIndex))


@pytest.mark.parametrize("option, dropped", [("exclude_group_of", 1), ("exclude_depiction", 3),
                                             ("exclude_occluded", 5), ("exclude_truncated", 6)])
def test_an_exclude_option_drops_flag_1_and_keeps_unknown(cache: Path, workspace, option: str, dropped: int) -> None:
    frame = run_select(workspace, labels=["Hamburger"], **{option: True})
    assert keys(frame, "Hamburger") & train(*range(7)) == train(*range(7)) - train(dropped)
    assert train(2) <= keys(frame)  # every flag of box 2 is -1 (unknown): kept


def test_min_box_area_drops_small_boxes(cache: Path, workspace) -> None:
    frame = run_select(workspace, labels=["Hamburger"], min_box_area=0.01)
    assert train(4).isdisjoint(keys(frame)) and train(0, 1, 2, 3, 5, 6) <= keys(frame)


def test_subclasses_join_their_parent_and_the_most_specific_label_wins(cache: Path, workspace) -> None:
    both = run_select(workspace, include_subclasses=True)
    submarine = both[both.BoxLabelName == SUBMARINE]
    assert submarine.Label.tolist() == ["Sandwich"] and submarine.LabelName.tolist() == [SANDWICH]
    assert set(both[both.BoxLabelName == HAMBURGER].Label) == {"Hamburger"}  # not Sandwich as well
    assert HOT_DOG not in set(both.BoxLabelName)

    alone = run_select(workspace, labels=["Sandwich"], include_subclasses=True)
    assert set(alone.BoxLabelName) == {SANDWICH, HAMBURGER, SUBMARINE} and set(alone.Label) == {"Sandwich"}

    without = run_select(workspace, labels=["Sandwich"], include_subclasses=False)
    assert set(without.BoxLabelName) == {SANDWICH}


def test_names_in_any_case_and_mids_select_the_same_boxes(cache: Path, workspace) -> None:
    by_name = run_select(workspace)
    workspace.write_params({"labels": ["Pizza"], "select": NO_FILTERS})
    assert select_main(["--labels", "hAMBURGER", "/m/0l515"]) == 0
    pd.testing.assert_frame_equal(pq.read_table(SELECTED).to_pandas(), by_name)


def test_the_per_label_limit_is_a_reproducible_seeded_draw(cache: Path, workspace) -> None:
    first = run_select(workspace, limit_per_label=5, seed=1)
    again = run_select(workspace, limit_per_label=5, seed=1)
    other = run_select(workspace, limit_per_label=5, seed=2)
    pd.testing.assert_frame_equal(first, again)
    assert first.Label.value_counts().to_dict() == {"Hamburger": 5, "Sandwich": 5}
    assert keys(first, "Sandwich") != keys(other, "Sandwich")
    alone = run_select(workspace, labels=["Sandwich"], limit_per_label=5, seed=1, include_subclasses=False)
    with_hamburger = run_select(workspace, labels=["Hamburger", "Sandwich"], limit_per_label=5, seed=1,
                                include_subclasses=False)
    assert keys(alone, "Sandwich") == keys(with_hamburger, "Sandwich")  # another label does not change the draw


def test_the_count_table_is_printed(cache: Path, workspace, capsys) -> None:
    capsys.readouterr()
    run_select(workspace, exclude_group_of=True, include_subclasses=True)
    out = capsys.readouterr()
    lines = out.out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("label"))
    assert lines[header].split() == ["label", "MID", "boxes", "after", "filters", "selected", "images"]
    assert lines[header + 1].split() == ["Hamburger", HAMBURGER, "9", "8", "8", "8"]
    assert lines[header + 2].split() == ["Sandwich", SANDWICH, "33", "32", "32", "32"]
    assert "Sandwich includes subclass boxes: Submarine sandwich 1" in out.out
    assert "1 selected box(es) have no row in the image table" in out.err


def test_an_unknown_label_exits_2_with_did_you_mean_and_no_traceback(cache: Path, workspace) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline.stages.select", "--labels", "Hamburgr", "Sandwich"],
                            cwd=workspace.path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: unknown label 'Hamburgr' — did you mean 'Hamburger'?"]
    assert not SELECTED.exists()


def test_without_a_cache_select_says_which_stage_to_run(workspace) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline.stages.select"], cwd=workspace.path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: data/metadata/classes.parquet not found: run "
                                          "`python -m pipeline.stages.metadata` first"]


@pytest.mark.parametrize("version", ["v4", "v6", "v7"])
def test_metadata_then_select_against_the_mirror(mirror: Mirror, workspace, capsys, version: str) -> None:
    workspace.write_params({**mirror.params_overrides(), "source.version": version, "select": NO_FILTERS})
    assert metadata_main([]) == 0
    assert select_main([]) == 0
    frame = pq.read_table(SELECTED).to_pandas()
    params = load_params()
    wanted = {"Hamburger", "Sandwich", "Submarine sandwich"}
    truth = mirror.truth[mirror.truth.labels.apply(lambda names: bool(wanted & set(names)))]
    assert set(frame.ImageID) == set(truth.ImageID)
    assert len(frame) == sum(sum(name in wanted for name in names) for names in truth.labels)
    assert set(frame.Label) == set(params.labels)
    by_image = truth.set_index("ImageID")
    assert (frame.OriginalURL == frame.ImageID.map(by_image.OriginalURL)).all()
    assert (frame.Subset == frame.ImageID.map(by_image.Subset)).all()


def test_a_label_without_boxes_gives_an_empty_table_and_a_warning(cache: Path, workspace, capsys) -> None:
    frame = run_select(workspace, labels=["Pizza"])
    assert frame.empty and list(frame.columns) == list(manifests.SELECTED.columns)
    assert "warning: no boxes selected for 'Pizza'" in capsys.readouterr().err


def test_the_stage_never_imports_pandas(cache: Path, workspace) -> None:
    """Its speed depends on it (pandas costs 0.3 s to import, half of a selection from the full V6 cache): a
    pyarrow scalar, ``pa.array()`` or ``to_numpy()`` in the stage's path would import it silently."""
    code = ("import sys, runpy\nsys.argv = ['select', '--labels', 'Hamburger', 'Sandwich']\n"
            "try:\n    runpy.run_module('pipeline.stages.select', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\nprint('pandas' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=workspace.path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert SELECTED.exists() and result.stdout.strip().splitlines()[-1] == "False"
