"""params.yaml validation: unknown keys, keys given twice and bad values are one-line errors naming the key
(or the flag the value came from), and runtime settings are kept apart from what stages track."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.base.errors import UserError
from pipeline.core.base.params import TRACKED_SECTIONS, Params, load_params

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "params.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def one_line_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(UserError) as info:
        load_params(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_repository_params_file_is_valid_and_lists_every_setting() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.source.version in ("v4", "v5", "v6", "v7")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    defaults = Params().to_dict()
    for section, values in defaults.items():  # a user finds every setting in the file, with its comment
        assert section in raw, section
        if isinstance(values, dict):
            assert set(raw[section]) == set(values), section


def test_a_missing_file_means_all_defaults(tmp_path: Path) -> None:
    assert load_params(tmp_path / "params.yaml") == Params()


@pytest.mark.parametrize("text, key", [
    ("selct: {}\n", "'selct'"),
    ("select:\n  limt_per_label: 5\n", "'select.limt_per_label'"),
    ("source:\n  verison: v6\n", "'source.verison'"),
    ("download:\n  1: 2\n  foo: 3\n", "'download.1'"),   # keys of two YAML types
])
def test_unknown_keys_are_named(tmp_path: Path, text: str, key: str) -> None:
    assert f"unknown key {key}" in one_line_error(write(tmp_path, text))


@pytest.mark.parametrize("text, message", [
    ("select:\n  limit_per_label: -1\n", "select.limit_per_label must be at least 0, got -1"),
    ("select:\n  min_box_area: 1.5\n", "select.min_box_area must be at most 1.0"),
    ("select:\n  include_subclasses: 1\n", "select.include_subclasses must be true or false"),
    ("select:\n  seed: 0.5\n", "select.seed must be a whole number"),
    ("select:\n  seed: '3'\n", "select.seed must be a whole number"),
    ("source:\n  version: v8\n", "source.version must be one of 'v4', 'v5', 'v6' or 'v7'"),
    ("source:\n  base_url: ftp://example.org\n", "source.base_url must be an http(s) URL"),
    ("source:\n  base_url: 'http://[::1'\n", "source.base_url must be an http(s) URL"),
    ("source:\n  base_url: 'http://127.0.0.1:99999/oi'\n", "source.base_url must be an http(s) URL"),
    ("source:\n  subsets: [train, holdout]\n", "source.subsets[1] must be one of 'train', 'validation' or 'test'"),
    ("labels: []\n", "labels must have at least 1 item"),
    ("select: 3\n", "select must be a mapping"),
    ("split:\n  train: 0.9\n", "split.train + split.val + split.test must be 1.0"),
    ("download:\n  rate: .nan\n", "download.rate must be a finite number"),
    ("runtime:\n  read_timeout: .nan\n", "runtime.read_timeout must be a finite number"),
    ("runtime:\n  read_timeout: .inf\n", "runtime.read_timeout must be a finite number"),
    ("crop:\n  padding: .nan\n", "crop.padding must be a finite number"),
    ("train:\n  lr: .nan\n", "train.lr must be a finite number"),
    ("train:\n  lr: 0\n", "train.lr must be more than 0"),
    (f"package:\n  name: openimages/{'x' * 300}\n", "package.name must look like owner/dataset"),
    # every seed reaches numpy's and torch's generators: 0..2**32-1
    ("select:\n  seed: -1\n", "select.seed must be at least 0, got -1"),
    ("split:\n  seed: -1\n", "split.seed must be at least 0, got -1"),
    ("train:\n  seed: 4294967296\n", "train.seed must be at most 4294967295, got 4294967296"),
    # timeouts, deadlines and backoffs: at most a week (1e300 overflowed the clocks they reach)
    ("runtime:\n  read_timeout: 1.0e+300\n", "runtime.read_timeout must be at most 604800.0, got 1e+300"),
    ("runtime:\n  connect_timeout: 1.0e+300\n", "runtime.connect_timeout must be at most 604800.0"),
    ("runtime:\n  stall_window: 1.0e+300\n", "runtime.stall_window must be at most 604800.0"),
    ("runtime:\n  image_deadline: 1.0e+300\n", "runtime.image_deadline must be at most 604800.0"),
    ("runtime:\n  metadata_deadline: 1.0e+300\n", "runtime.metadata_deadline must be at most 604800.0"),
    ("runtime:\n  backoff: 1.0e+300\n", "runtime.backoff must be at most 604800.0"),
    ("runtime:\n  max_backoff: 1.0e+300\n", "runtime.max_backoff must be at most 604800.0"),
    # every accepted name is a runnable argument and a plain folder name; a dataset never takes a model's name
    ('package:\n  name: "a/b\\n"\n', "package.name must look like owner/dataset"),
    ("package:\n  name: '-/-'\n", "package.name must look like owner/dataset"),
    ("package:\n  name: _team/food\n", "package.name must look like owner/dataset"),
    ("package:\n  name: team/food.v2\n", "package.name must look like owner/dataset"),
    ("package:\n  name: team/food-model\n", "package.name must not end in -model (reserved for models"),
    (f"package:\n  name: team/{'x' * 59}\n", "package.name must have at most 58 characters after the slash"),
])
def test_bad_values_are_named(tmp_path: Path, text: str, message: str) -> None:
    assert message in one_line_error(write(tmp_path, text))


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    message = one_line_error(write(tmp_path, "download:\n  rate: 1\n  rate: 50\n"))
    assert "key 'rate' is given twice (line 3)" in message


@pytest.mark.parametrize("content, message", [
    ("select: [unclosed\n", "not valid YAML"),
    (b"labels: [Caf\xe9]\n", "not UTF-8 text"),
    ("- just\n- a list\n", "expected a mapping of sections"),
])
def test_unreadable_files_are_one_line(tmp_path: Path, content: str | bytes, message: str) -> None:
    assert message in one_line_error(write(tmp_path, content))


def test_a_folder_in_place_of_the_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").mkdir()
    assert "not a file" in one_line_error(tmp_path / "params.yaml")


def test_an_empty_value_means_the_default(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, "download:\npackage:\n  registry:\n"))
    assert params.download == Params().download and params.package.registry == ""


def test_a_single_label_may_be_written_without_a_list(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, "labels: Hamburger\n")).labels == ["Hamburger"]


def test_overrides_are_validated_like_the_file_and_errors_name_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, "select:\n  seed: 3\ndownload:\n")  # an empty section still takes a flag
    params = load_params(path, overrides={"labels": ["Pizza"], "select.limit_per_label": 7, "download.rate": 5.0})
    assert (params.labels, params.select.limit_per_label, params.select.seed, params.download.rate) == (
        ["Pizza"], 7, 3, 5.0)
    flags = {"select.limit_per_label": "--limit", "download.rate": "--rate"}
    message = one_line_error(path, overrides={"select.limit_per_label": -1}, flags=flags)
    assert message == "--limit: must be at least 0, got -1"
    assert one_line_error(path, overrides={"download.rate": float("nan")}, flags=flags).startswith(
        "--rate: must be a finite number")
    # a bad value from the file is still reported as the file's, even when a flag could have set it
    assert one_line_error(write(tmp_path, "select:\n  limit_per_label: -2\n"), flags=flags).startswith(
        "params.yaml: select.limit_per_label")


def test_runtime_is_apart_from_what_stages_track() -> None:
    params = Params()
    assert "runtime" not in TRACKED_SECTIONS and "runtime" not in params.tracked()
    tracked_keys = {f"{s}.{k}" for s, v in params.tracked().items() if isinstance(v, dict) for k in v}
    for machine_setting in ("connections", "download_processes", "crop_processes", "loader_workers", "device",
                            "cache_mb", "eval_batch_size", "shard_size", "read_timeout"):
        assert not any(key.endswith("." + machine_setting) for key in tracked_keys), machine_setting
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    named = [p for stage in dvc["stages"].values() for p in stage.get("params", [])]
    assert not [p for p in named if p.split(".")[0] == "runtime"]


@pytest.mark.parametrize("module", ["pipeline.stages.select", "pipeline.stages.metadata"])
def test_commands_stop_with_exit_2_and_one_line_naming_the_key(tmp_path: Path, module: str) -> None:
    write(tmp_path, "select:\n  limt_per_label: 5\n")
    result = subprocess.run([sys.executable, "-m", module], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: params.yaml: unknown key 'select.limt_per_label'")
    assert "limit_per_label" in lines[0]  # the message lists the keys that do exist
    assert not (tmp_path / "data").exists()  # nothing was fetched or written


@pytest.mark.parametrize("content, message", [
    (b"download:\n  rate: 1\n  rate: 50\n", "key 'rate' is given twice"),
    (b"download:\n  1: 2\n  foo: 3\n", "unknown key 'download.1'"),
    (b"labels: [Caf\xe9]\n", "not UTF-8 text"),
    (b"source:\n  base_url: 'http://[::1'\n", "source.base_url must be an http(s) URL"),
    (b"download:\n  rate: .nan\n", "download.rate must be a finite number"),
    (b"split:\n  seed: -1\n", "split.seed must be at least 0"),
    (b"runtime:\n  read_timeout: 1.0e+300\n", "runtime.read_timeout must be at most 604800.0"),
])
def test_a_stage_given_a_bad_params_file_says_so_in_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    write(tmp_path, content)
    result = subprocess.run([sys.executable, "-m", "pipeline.stages.download"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
