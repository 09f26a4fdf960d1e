"""``python -m pipeline.stages.package`` into the local registry: contents, metadata, attribution, README, the
same top hash for the same inputs, and one-line errors. (Pushing to S3 and pulling: test_pull.py.)"""
from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pandas as pd
import pytest
import yaml
from package_inputs import (LABELS, PER_SPLIT, crops, expected_sources, image_id, one_line_error, photo_credits, run,
                            write_inputs)
from s3server import isolated_env

from pipeline.core.io import write_parquet

NAME = "tests/local-ds"
REPO = Path(__file__).resolve().parent.parent


def counts() -> dict[str, dict[str, int]]:
    """The truth: crops per split and label, from the inputs' definition."""
    return {split: {label: sum(c["split"] == split and c["label"] == label for c in crops()) for label in LABELS}
            for split in PER_SPLIT}


def build(ws: Path, env: dict[str, str]) -> dict:
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((ws / "data/package.json").read_text())


def manifest(ws: Path, top_hash: str) -> list[dict]:
    """The version's quilt3 manifest (JSON lines: package metadata first, then one line per file)."""
    text = (ws / "data/quilt-registry/.quilt/packages" / top_hash).read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return isolated_env(tmp_path / "home")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    write_inputs(workspace, {"name": NAME, "registry": ""})
    return workspace


def test_local_build_holds_every_file_and_its_provenance(ws: Path, env: dict[str, str]) -> None:
    info = build(ws, env)
    assert info["name"] == NAME and info["registry"] == "data/quilt-registry" and len(info["top_hash"]) == 64
    meta_line, *entries = manifest(ws, info["top_hash"])
    sources = expected_sources(ws)
    assert {entry["logical_key"] for entry in entries} == set(sources) | {"README.md", "ATTRIBUTION.csv"}

    # Every copied file is stored in the registry itself, byte for byte (not a pointer into data/).
    registry = (ws / "data/quilt-registry").resolve()
    for entry in entries:
        stored = Path(url2pathname(urlsplit(entry["physical_keys"][0]).path))
        assert stored.is_relative_to(registry), stored
        if entry["logical_key"] in sources:
            assert stored.read_bytes() == sources[entry["logical_key"]].read_bytes()

    meta = meta_line["user_meta"]
    assert meta_line["message"] == "openimages-pipeline dataset"
    assert meta["source"]["version"] == "v6"
    assert meta["params"]["labels"] == list(LABELS) and "split" in meta["params"] and "package" not in meta["params"]
    assert meta["dataset"]["counts"] == counts()
    assert meta["dataset"]["images"] == len(crops()) and meta["dataset"]["photos"] == len(crops()) - 1
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert meta["code"]["git_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")


def test_same_inputs_same_top_hash_anywhere_and_params_change_it(ws: Path, env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    first = build(ws, env)["top_hash"]

    # The same inputs written again elsewhere (other paths, later mtimes): the same top hash.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_inputs(elsewhere, {"name": NAME, "registry": ""})
    assert build(elsewhere, env)["top_hash"] == first

    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["split"] = {"seed": 7}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    changed = build(ws, env)["top_hash"]
    assert changed != first
    meta = manifest(ws, changed)[0]["user_meta"]
    assert meta["params"]["split"]["seed"] == 7


def test_attribution_and_readme(ws: Path, env: dict[str, str], tmp_path: Path) -> None:
    top_hash = build(ws, env)["top_hash"]
    out = tmp_path / "pulled"
    result = run(ws, env, "pipeline.pull", NAME, "--registry", "data/quilt-registry", "--hash", top_hash[:10],
                 "--dest", str(out))
    assert result.returncode == 0, result.stderr[-3000:]

    with open(out / "ATTRIBUTION.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    photos = sorted({crop["photo"] for crop in crops()}, key=image_id)
    assert [row["ImageID"] for row in rows] == [image_id(p) for p in photos]  # one row per photo, sorted
    for row, photo in zip(rows, photos):
        credits = photo_credits(photo)
        for column in ("AuthorProfileURL", "OriginalLandingURL", "License", "Title"):
            assert row[column] == credits[column]
        # A leading '=' would run as a formula in a spreadsheet: it is escaped, the rest kept.
        assert row["Author"] == ("'" + credits["Author"] if credits["Author"].startswith("=") else credits["Author"])

    readme = (out / "README.md").read_text()
    assert "Open Images v6" in readme and "CC BY 2.0" in readme
    for label in LABELS:
        per_split = [counts()[split][label] for split in PER_SPLIT]
        assert f"| {label} | {' | '.join(map(str, per_split))} | {sum(per_split)} |" in readme
    assert f"python -m pipeline.pull {NAME} --registry data/quilt-registry" in readme
    assert f"quilt3 install {NAME}" in readme


def test_missing_input_and_bad_registry_are_one_line_errors(ws: Path, env: dict[str, str]) -> None:
    (ws / "data/selected.parquet").unlink()
    error = one_line_error(run(ws, env, "pipeline.stages.package"))
    assert "data/selected.parquet" in error

    write_inputs(ws, {"name": NAME, "registry": "s3://bucket/some/path"})
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 2 and "s3://bucket" in one_line_error(result)

    write_inputs(ws, {"name": "no-owner", "registry": ""})
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 2 and "package.name" in one_line_error(result)
    assert not (ws / "data/package.json").exists()


def test_inputs_that_do_not_match_are_refused(ws: Path, env: dict[str, str]) -> None:
    selected = pd.read_parquet(ws / "data/selected.parquet")
    write_parquet(selected[selected.ImageID != image_id(3)], ws / "data/selected.parquet")
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 2 and image_id(3) in one_line_error(result)

    write_parquet(selected.drop(columns=["Author"]), ws / "data/selected.parquet")
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 2 and "Author" in one_line_error(result)
