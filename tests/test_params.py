"""params.yaml validation: unknown keys and bad values are one-line errors naming the key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.params import Params, load_params

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_the_repository_params_file_is_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.source.version in ("v4", "v5", "v6", "v7")
    assert params.labels


def test_a_missing_file_means_all_defaults(tmp_path: Path) -> None:
    assert load_params(tmp_path / "params.yaml") == Params()


@pytest.mark.parametrize("text, key", [
    ("selct: {}\n", "'selct'"),
    ("select:\n  limt_per_label: 5\n", "'select.limt_per_label'"),
    ("source:\n  verison: v6\n", "'source.verison'"),
])
def test_unknown_keys_are_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(UserError, match=f"unknown key {key}"):
        load_params(write(tmp_path, text))


@pytest.mark.parametrize("text, message", [
    ("select:\n  limit_per_label: -1\n", "select.limit_per_label must be at least 0"),
    ("select:\n  min_box_area: 1.5\n", "select.min_box_area must be at most 1.0"),
    ("select:\n  include_subclasses: 1\n", "select.include_subclasses must be true or false"),
    ("select:\n  seed: 0.5\n", "select.seed must be a whole number"),
    ("source:\n  version: v8\n", "source.version must be one of v4, v5, v6, v7"),
    ("source:\n  base_url: ftp://example.org\n", "source.base_url must be an http(s) URL"),
    ("source:\n  subsets: [train, holdout]\n", "source.subsets[1] must be one of train, validation, test"),
    ("labels: []\n", "labels must have at least 1 item"),
    ("select: 3\n", "select must be a mapping"),
    ("split:\n  train: 0.9\n", "split.train + split.val + split.test must be 1.0"),
])
def test_bad_values_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        load_params(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_broken_yaml_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not valid YAML") as info:
        load_params(write(tmp_path, "select: [unclosed\n"))
    assert "\n" not in str(info.value)


def test_a_single_label_may_be_written_without_a_list(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, "labels: Hamburger\n")).labels == ["Hamburger"]


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "select:\n  seed: 3\n")
    params = load_params(path, overrides={"labels": ["Pizza"], "select.limit_per_label": 7})
    assert (params.labels, params.select.limit_per_label, params.select.seed) == (["Pizza"], 7, 3)
    with pytest.raises(UserError, match="select.limit_per_label must be a whole number"):
        load_params(path, overrides={"select.limit_per_label": "many"})


@pytest.mark.parametrize("module", ["pipeline.select", "pipeline.metadata"])
def test_commands_stop_with_exit_2_and_one_line_naming_the_key(tmp_path: Path, module: str) -> None:
    write(tmp_path, "select:\n  limt_per_label: 5\n")
    result = subprocess.run([sys.executable, "-m", module], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: params.yaml: unknown key 'select.limt_per_label'")
    assert "limit_per_label" in lines[0]  # the message lists the keys that do exist
    assert not (tmp_path / "data").exists()  # nothing was fetched or written
