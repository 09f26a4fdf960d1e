"""The metadata stage: the real Open Images rows parse, and download + conversion work against the mirror."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import requests

from pipeline.core.base import manifests as metadata_cache
from pipeline.core.base.errors import PipelineFailure
from pipeline.core.base.paths import BOXES_DIR, CLASSES_TABLE, HIERARCHY_JSON, IMAGES_TABLE, METADATA_RAW
from pipeline.core.net.sources import layout
from pipeline.mirror import Mirror
from pipeline.stages.metadata import convert
from pipeline.stages.metadata import stage as metadata

SAMPLES = Path(__file__).parent / "fixtures" / "openimages-samples"


def read_boxes_dataset(path: Path) -> pd.DataFrame:
    """The partitioned cache as any pyarrow user reads it (hive layout, URI-encoded MIDs)."""
    table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    return table.to_pandas().sort_values(["Subset", "BoxIndex"]).reset_index(drop=True)


def convert_sample(tmp_path: Path, *names: str, flush_rows: int = convert.FLUSH_ROWS) -> pd.DataFrame:
    sources = {subset: SAMPLES / name for subset, name in zip(("train", "validation", "test"), names)}
    stats = convert.convert_boxes(sources, tmp_path / "boxes", flush_rows=flush_rows)
    frame = read_boxes_dataset(tmp_path / "boxes")
    assert stats.rows == len(frame) and stats.skipped == 0
    return frame


def expected_boxes(name: str) -> pd.DataFrame:
    return pd.read_csv(SAMPLES / name)


# --- the real rows parse ------------------------------------------------------------------------------

def test_the_class_list_without_a_header_keeps_its_first_row() -> None:
    table = convert.read_classes(SAMPLES / "class-descriptions-boxable.v5.first50rows.csv")
    assert table.num_rows == 50
    assert table.slice(0, 1).to_pylist() == [{"LabelName": "/m/011k07", "DisplayName": "Tortoise"}]


@pytest.mark.parametrize("prefix", ["LabelName,DisplayName\n", "\ufeffLabelName,DisplayName\r\n"])
def test_the_class_list_with_a_header_skips_it(tmp_path: Path, prefix: str) -> None:
    rows = (SAMPLES / "class-descriptions-boxable.v5.food-rows.csv").read_text()
    (tmp_path / "classes.csv").write_text(prefix + rows, encoding="utf-8")
    table = convert.read_classes(tmp_path / "classes.csv")
    assert table.num_rows == 8
    assert "LabelName" not in table.column("LabelName").to_pylist()
    assert dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist()))["/m/0cdn1"] == "Hamburger"


@pytest.mark.parametrize("name", ["train-annotations-bbox.2018_04.sample.csv",
                                  "v4-doc-example-annotations-bbox.freeform.sample.csv",
                                  "v5-doc-example-validation-annotations-bbox.sample.csv",
                                  "misc-real-bbox-rows.csv",
                                  "oidv6-train-annotations-bbox.sample.csv"])
def test_real_box_rows_convert_with_their_values(tmp_path: Path, name: str) -> None:
    got = convert_sample(tmp_path, name)
    want = expected_boxes(name)
    assert list(got.columns) == ["ImageID", "Subset", "BoxIndex", "Source", "Confidence", "XMin", "XMax", "YMin",
                                 "YMax", "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside", "LabelName"]
    assert got.BoxIndex.tolist() == list(range(len(want)))
    assert (got.Subset == "train").all()
    for column in ["ImageID", "Source", "LabelName"]:
        assert got[column].tolist() == want[column].tolist()
    for column in metadata_cache.COORDS + ["Confidence"]:
        assert got[column].dtype == "float32"
        assert got[column].tolist() == pytest.approx(want[column].tolist(), abs=1e-6)
    for column in metadata_cache.FLAGS:
        assert got[column].dtype == "int8" and got[column].tolist() == want[column].tolist()


def test_the_v6_file_loses_its_xclick_columns(tmp_path: Path) -> None:
    assert not [c for c in convert_sample(tmp_path, "oidv6-train-annotations-bbox.sample.csv") if "XClick" in c]


def test_partitions_are_one_folder_per_uri_encoded_mid(tmp_path: Path) -> None:
    convert_sample(tmp_path, "train-annotations-bbox.2018_04.sample.csv", "misc-real-bbox-rows.csv")
    folders = {p.name for p in (tmp_path / "boxes").iterdir()}
    mids = set(expected_boxes("train-annotations-bbox.2018_04.sample.csv").LabelName) | {"/m/09j5n", "/m/0gxl3"}
    assert folders == {"LabelName=" + mid.replace("/", "%2F") for mid in mids}
    assert "LabelName=%2Fm%2F01g317" in folders
    assert metadata_cache.partition_dir(tmp_path / "boxes", "/m/09j5n").name == "LabelName=%2Fm%2F09j5n"


def test_many_small_flushes_give_the_same_rows_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = convert_sample(tmp_path / "one", "train-annotations-bbox.2018_04.sample.csv", "misc-real-bbox-rows.csv")
    monkeypatch.setattr(convert, "BLOCK_SIZE", 256)  # CSV blocks of a row or two, flushed every 2 rows
    many = convert_sample(tmp_path / "many", "train-annotations-bbox.2018_04.sample.csv", "misc-real-bbox-rows.csv",
                          flush_rows=2)
    pd.testing.assert_frame_equal(one, many)
    part = metadata_cache.partition_dir(tmp_path / "many" / "boxes", "/m/01g317") / metadata_cache.PART_FILE
    assert pq.ParquetFile(part).num_row_groups > 1
    assert (many.groupby(["LabelName", "Subset"]).BoxIndex.apply(lambda s: s.is_monotonic_increasing)).all()


def test_unknown_flags_and_empty_numbers_become_minus_one_and_nan(tmp_path: Path) -> None:
    lines = (SAMPLES / "train-annotations-bbox.2018_04.sample.csv").read_text().splitlines()
    fields = lines[1].split(",")
    fields[10], fields[11], fields[5] = "-1", "", ""  # IsGroupOf -1, IsDepiction empty, XMax empty
    (tmp_path / "boxes.csv").write_text("\n".join([lines[0], ",".join(fields)]) + "\n")
    convert.convert_boxes({"train": tmp_path / "boxes.csv"}, tmp_path / "boxes")
    row = read_boxes_dataset(tmp_path / "boxes").iloc[0]
    assert (row.IsGroupOf, row.IsDepiction) == (-1, -1) and math.isnan(row.XMax)


def test_a_box_file_without_a_needed_column_is_refused_by_name(tmp_path: Path) -> None:
    frame = expected_boxes("misc-real-bbox-rows.csv").drop(columns=["IsGroupOf"])
    frame.to_csv(tmp_path / "boxes.csv", index=False)
    with pytest.raises(PipelineFailure, match="no column IsGroupOf"):
        convert.convert_boxes({"train": tmp_path / "boxes.csv"}, tmp_path / "boxes")


def test_the_image_tables_convert_without_thumbnails_and_with_nan_for_empty_rotation(tmp_path: Path) -> None:
    stats = convert.convert_images({"train": SAMPLES / "train-images-boxable-with-rotation.sample.csv",
                                    "validation": SAMPLES / "validation-images-with-rotation.sample.csv"},
                                   tmp_path / "images.parquet")
    table = pq.read_table(tmp_path / "images.parquet")
    assert stats.rows == 3 and table.schema == metadata_cache.IMAGE_SCHEMA
    rows = {r["ImageID"]: r for r in table.to_pylist()}
    first = rows["4fa8054781a4c382"]
    assert first["Subset"] == "train" and first["OriginalMD5"] == "KFukvivpCM5QXl5SqKe41g=="
    assert first["OriginalSize"] == 4405052 and first["Rotation"] == 0.0 and first["Title"] == "...die FNF-Kerze"
    assert rows["fe600639ac5f36c1"]["Subset"] == "validation" and math.isnan(rows["fe600639ac5f36c1"]["Rotation"])


def test_the_v3_doc_example_as_quoted_is_reported_as_a_malformed_row(tmp_path: Path) -> None:
    # The V3 README quotes this row with the comma after the title missing: 10 fields, not 11.
    stats = convert.convert_images({"train": SAMPLES / "v3-images.csv.doc-example.txt"}, tmp_path / "images.parquet")
    assert (stats.rows, stats.skipped) == (0, 1)
    assert "10 of 11 columns" in stats.first_skipped and "000060e3121c7305" in stats.first_skipped


def test_the_v3_eleven_column_table_parses_with_nan_rotation(tmp_path: Path) -> None:
    text = (SAMPLES / "v3-images.csv.doc-example.txt").read_text().replace('house."211079', 'house.",211079')
    (tmp_path / "images.csv").write_text(text)
    convert.convert_images({"train": tmp_path / "images.csv"}, tmp_path / "images.parquet")
    (row,) = pq.read_table(tmp_path / "images.parquet").to_pylist()
    assert (row["Author"], row["Title"], row["OriginalSize"]) == ("David", "28 Nov 2010 Our new house.", 211079)
    assert row["AuthorProfileURL"] == "https://www.flickr.com/people/brokentaco/" and math.isnan(row["Rotation"])


# --- the stage against the mirror --------------------------------------------------------------------

@pytest.fixture
def armed(mirror: Mirror) -> Iterator[Mirror]:
    """The shared mirror, cutting the first GET of each metadata file half-way; switched off afterwards."""
    mirror.clear_requests()
    mirror.configure(metadata_truncate_once=True)
    yield mirror
    mirror.configure(metadata_truncate_once=False)


def run_metadata(capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert metadata.main([]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("version", ["v4", "v6", "v7"])
def test_the_stage_resumes_every_cut_download_and_converts(armed: Mirror, workspace, capsys, version: str) -> None:
    workspace.write_params({**armed.params_overrides(), "source.version": version})
    out = run_metadata(capsys)
    files = layout(version).files()
    log = armed.requests
    for rel in files:
        assert [r.status for r in log if r.path.endswith("/" + rel)] == [200, 206]
        assert (METADATA_RAW / rel).read_bytes() == _served(armed, rel)
    assert out.count("downloaded") == len(files) and out.count("2 attempts") == len(files)
    assert out.count("converted") == 4
    boxes = read_boxes_dataset(BOXES_DIR)
    assert set(boxes.Subset) == {"train", "validation", "test"}
    sample = expected_boxes("train-annotations-bbox.2018_04.sample.csv" if version == "v4"
                            else "oidv6-train-annotations-bbox.sample.csv")  # real rows the mirror serves
    real = boxes[(boxes.ImageID == "000002b66c9c498e") & (boxes.Subset == "train")].sort_values("BoxIndex")
    assert real.LabelName.tolist() == sample.LabelName.tolist()
    assert real.XMin.tolist() == pytest.approx(sample.XMin.tolist(), abs=1e-6)
    assert "fe600639ac5f36c1" in pq.read_table(IMAGES_TABLE).column("ImageID").to_pylist()
    assert pq.read_table(CLASSES_TABLE).num_rows == len(_served(armed, layout(version).classes).decode().splitlines()) - (version == "v7")
    assert HIERARCHY_JSON.read_bytes() == _served(armed, layout(version).hierarchy)


def _served(mirror: Mirror, rel: str) -> bytes:
    return requests.get(f"{mirror.base_url}/{rel}", timeout=10).content


def test_a_second_run_fetches_and_converts_nothing(mirror: Mirror, workspace, capsys) -> None:
    workspace.write_params({**mirror.params_overrides(), "source.subsets": ["validation"]})
    run_metadata(capsys)
    stamp = {p: p.stat().st_mtime_ns for p in (CLASSES_TABLE, IMAGES_TABLE, HIERARCHY_JSON)}
    mirror.clear_requests()
    out = run_metadata(capsys)
    assert mirror.requests == []
    assert out.count("up to date") == 4 and "converted" not in out and out.count("present") == 4
    assert stamp == {p: p.stat().st_mtime_ns for p in stamp}

    raw = METADATA_RAW / layout("v6").boxes["validation"]
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))  # the raw file changed
    out = run_metadata(capsys)
    assert "converted   boxes" in out and out.count("up to date") == 3


def test_an_unknown_label_stops_before_the_big_downloads(mirror: Mirror, workspace) -> None:
    workspace.write_params({**mirror.params_overrides(), "labels": ["Hamburgr", "Sandwich"]})
    mirror.clear_requests()
    result = subprocess.run([sys.executable, "-m", "pipeline.stages.metadata"], cwd=workspace.path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: unknown label 'Hamburgr' — did you mean 'Hamburger'?"]
    lay = layout("v6")
    assert sorted(r.path for r in mirror.requests) == sorted(f"/openimages/{p}" for p in (lay.classes, lay.hierarchy))
    assert not (METADATA_RAW / lay.boxes["train"]).exists()
