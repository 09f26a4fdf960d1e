"""The dataset report: counts, contact sheets, rejected files by reason, class balance, and escaped HTML."""
from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd
import pytest
from clean_inputs import inside, row, synthetic_rows, write_inputs
from PIL import Image

from pipeline import report as report_command
from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.stages.split import report
from pipeline.stages.split import stage as split
from pipeline.stages.split.__main__ import main as split_main

EVIL = "<script>alert('x')</script>"
LABELS = ("Hamburger", "Sandwich", EVIL)


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A split workspace (whose stage wrote the report) with one rejected photo or crop of every kind."""
    root = tmp_path_factory.mktemp("report")
    rows = synthetic_rows(120, LABELS) + [
        row(900, 0, "Hamburger", "placeholder", detail="redirected to photo_unavailable.png"),
        row(901, 0, "Sandwich", "corrupt", detail="<b>decode</b> failed"),
        row(901, 1, "Sandwich", "corrupt", detail="<b>decode</b> failed"),
        row(902, 0, "Hamburger", "not_downloaded", detail="404"),
        row(903, 0, EVIL, "too_small", detail="20x18"),
        row(904, 0, "Sandwich", "changed", detail="md5 differs"),
    ]
    write_inputs(root, rows)
    with inside(root):
        assert run_cli(split_main, []) == 0
    return root


def page(root: Path) -> str:
    return (root / paths.DATASET_REPORT / "index.html").read_text(encoding="utf-8")


def tile_origin(index: int, n: int) -> tuple[int, int]:
    cols = min(report.COLUMNS, n)
    row_, col = divmod(index, cols)
    return report.GAP + col * (report.TILE + report.GAP), report.GAP + row_ * (report.TILE + report.GAP)


def test_html_has_the_counts_per_label_and_split(done):
    table = pd.read_parquet(done / paths.SPLITS_MANIFEST)
    counts = pd.crosstab(table["Label"], table["split"])
    text = page(done)
    for label in LABELS:
        cells = "".join(f"<td>{counts.loc[label, s]}</td>" for s in paths.SPLIT_NAMES)
        assert f"<tr><th>{html.escape(label)}</th>{cells}<td>{counts.loc[label].sum()}</td>" in text
        for s in paths.SPLIT_NAMES:
            assert f"<h4>{s}: {counts.loc[label, s]} crops" in text


def test_html_escapes_strings_from_the_data(done):
    text = page(done)
    assert "<script" not in text and "<b>" not in text
    assert html.escape(EVIL) in text
    assert "&lt;b&gt;decode&lt;/b&gt; failed" in text


def test_html_is_self_contained(done):
    text = page(done)
    sources = re.findall(r'src="([^"]+)"', text)
    assert sources and all((done / paths.DATASET_REPORT / src).is_file() for src in sources)
    assert "http://" not in text and "https://" not in text


def test_class_balance_csv_matches_the_splits(done):
    balance = pd.read_csv(done / paths.CLASS_BALANCE)
    assert list(balance.columns[:3]) == ["label", "split", "count"]
    table = pd.read_parquet(done / paths.SPLITS_MANIFEST)
    expected = table.groupby(["Label", "split"]).size()
    assert len(balance) == len(LABELS) * len(paths.SPLIT_NAMES)
    for r in balance.itertuples():
        assert r.count == expected[(r.label, r.split)]
        assert r.bar == f"{r.label} ({r.split})"
    chart = Image.open(done / paths.DATASET_REPORT / "class_balance.png")
    chart.load()
    assert chart.width > 300


def test_sample_contact_sheets_have_the_tile_grid(done):
    table = pd.read_parquet(done / paths.SPLITS_MANIFEST)
    sizes = table.groupby(["Label", "split"]).size()
    assert sizes.max() > report.SAMPLES and sizes.min() <= report.COLUMNS * 2  # full and partial sheets
    for (label, name), n in sizes.items():
        shown = min(n, report.SAMPLES)
        cols, rows = min(shown, report.COLUMNS), -(-shown // report.COLUMNS)
        with Image.open(done / paths.DATASET_REPORT / f"{name}_{split.label_dirname(label)}.png") as sheet:
            sheet.load()
            assert sheet.size == (report.GAP + cols * (report.TILE + report.GAP),
                                  report.GAP + rows * (report.TILE + report.GAP))
            centres = [tile_origin(i, shown) for i in range(cols * rows)]
            filled = [sheet.getpixel((x + report.TILE // 2, y + report.TILE // 2)) != report.BACKGROUND
                      for x, y in centres]
            assert filled == [i < shown for i in range(cols * rows)]


def test_rejected_grouped_by_reason_with_thumbnails(done):
    out = done / paths.DATASET_REPORT
    text = page(done)
    for reason in ("placeholder", "corrupt", "not_downloaded", "too_small", "changed"):
        assert f'<img src="rejected_{reason}.png"' in text
    assert "corrupt: 2 crops from 1 photos" in text
    corner = (report.GAP + 2, report.GAP + 2)
    with Image.open(out / "rejected_corrupt.png") as sheet:  # two boxes of one photo: shown once
        assert sheet.size == report.sheet_size(1)
        assert sheet.getpixel(corner) == report.UNDECODABLE
    with Image.open(out / "rejected_not_downloaded.png") as sheet:
        assert sheet.getpixel(corner) == report.NO_FILE
    with Image.open(out / "rejected_placeholder.png") as sheet:  # the downloaded placeholder photo itself
        x, y = tile_origin(0, 1)
        assert sheet.getpixel((x + report.TILE // 2, y + report.TILE // 2)) == (200, 200, 200)
    with Image.open(out / "rejected_too_small.png") as sheet:  # its crop, not the whole photo
        x, y = tile_origin(0, 1)
        tile = sheet.convert("RGB").crop((x, y, x + report.TILE, y + report.TILE))
        crop = done / paths.CROPS_DIR / split.label_dirname(EVIL) / f"{903:016x}_0.jpg"
        assert tile.tobytes() == report.thumbnail(crop).tobytes()
        assert tile.tobytes() != report.thumbnail(done / paths.IMAGES_DIR / f"{903:016x}.jpg").tobytes()


def test_report_alone_is_deterministic_and_rebuilt(done):
    out = done / paths.DATASET_REPORT
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "stale.png").write_bytes(b"old")
    with inside(done):
        assert run_cli(report_command.main, []) == 0
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before


def test_report_without_splits_says_what_to_run(tmp_path, capsys):
    with inside(tmp_path):
        assert run_cli(report_command.main, []) == 2
    assert "python -m pipeline.stages.split" in capsys.readouterr().err


def test_thumbnail_of_an_undecodable_file(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    tile = report.thumbnail(broken)
    assert tile.size == (report.TILE, report.TILE)
    assert tile.getpixel((1, 1)) == report.UNDECODABLE
