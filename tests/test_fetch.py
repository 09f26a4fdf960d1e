"""``python -m pipeline.fetch LABEL...``: metadata + select + download in one command, against the mirror."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.base.errors import run_cli
from pipeline.core.base.io import read_parquet
from pipeline.fetch import main as fetch_main

REPO = Path(__file__).resolve().parent.parent
FAST = {"runtime": {"retries": 3, "backoff": 0.05, "max_backoff": 2.0, "read_timeout": 1.0}}


def fetch(*argv: str) -> int:
    return run_cli(fetch_main, list(argv))


def test_fetch_two_labels_from_flickr_with_faults(mirror, workspace, capsys):
    workspace.write_params({**mirror.params_overrides(), **FAST})
    mirror.reset_faults()
    assert fetch("hamburger", "Sandwich", "--rate", "0", "--connections", "8", "--out", "burgers") == 0

    out = workspace.path / "burgers"
    selected = read_parquet(out / "data/selected.parquet")
    manifest = read_parquet(out / "data/images/manifest.parquet")
    assert set(selected["Label"]) == {"Hamburger", "Sandwich"}
    assert manifest["ImageID"].is_unique and set(manifest["ImageID"]) == set(selected["ImageID"])
    truth = mirror.truth.set_index("ImageID")
    for rec in manifest.itertuples():  # exit 0 although some photos are gone: they are recorded
        assert rec.status == truth.at[rec.ImageID, "expected_status"], (rec.ImageID, rec.reason)
    assert {"not_found", "placeholder"} <= set(manifest["status"])
    assert all((out / "data/images" / p).is_file() for p in manifest["path"] if p)
    assert not (workspace.path / "data").exists()  # everything went under --out
    printed = capsys.readouterr().out
    assert "after filters" in printed and "not_found" in printed and "total" in printed


def test_flags_override_params(clean_mirror, workspace):
    workspace.write_params({**clean_mirror.params_overrides(), **FAST})
    assert fetch("Hamburger", "--source", "cvdf", "--limit", "3", "--rate", "50", "--version", "v5",
                 "--out", "small") == 0
    selected = read_parquet("small/data/selected.parquet")
    manifest = read_parquet("small/data/images/manifest.parquet")
    assert set(selected["Label"]) == {"Hamburger"} and len(selected) == 3
    assert manifest["url"].str.startswith(clean_mirror.cvdf_url + "/").all()
    assert (manifest["status"] == "ok").all()
    assert (Path("small/data/metadata/raw/v5/class-descriptions-boxable.csv")).is_file()  # v5's own class list


def test_unknown_label_is_bad_input_before_any_download(clean_mirror, workspace, capsys):
    workspace.write_params(clean_mirror.params_overrides())
    assert fetch("Hamburgr", "--out", "x") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Hamburger" in err  # one line, naming the closest real label
    assert not Path("x/data/images").exists() and not Path("x/data/selected.parquet").exists()


def test_bad_flag_values_are_bad_input(workspace, capsys):
    assert fetch("Hamburger", "--rate", "-1") == 2
    assert "--rate: must be at least 0" in capsys.readouterr().err
    assert fetch("Hamburger", "--connections", "0") == 2
    assert not Path("data").exists()


def test_unreachable_image_server_is_a_failure(clean_mirror, workspace, capsys):
    workspace.write_params({**clean_mirror.params_overrides(), "source.cvdf_url": "http://127.0.0.1:9",
                            "runtime": {**FAST["runtime"], "retries": 0}})
    assert fetch("Hamburger", "--source", "cvdf", "--limit", "2", "--rate", "0") == 1
    assert "failed" in capsys.readouterr().err


def test_help_as_a_real_command():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pipeline.fetch", "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0
    for flag in ("--version", "--source", "--base-url", "--cvdf-url", "--limit", "--rate", "--connections", "--out"):
        assert flag in done.stdout


@pytest.mark.parametrize("argv", [[], ["Hamburger", "--source", "s3"]])
def test_missing_labels_or_bad_choice_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        fetch(*argv)
    assert exc.value.code == 2


def test_fetch_in_an_empty_folder_with_flags_only(clean_mirror, tmp_path):
    """No params.yaml anywhere: the built-in defaults, with the mirror's URLs given as flags, as a real command."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.fetch", "Hamburger", "--source", "cvdf", "--limit", "3", "--rate", "0",
         "--base-url", clean_mirror.base_url, "--cvdf-url", clean_mirror.cvdf_url],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "params.yaml").exists()
    manifest = read_parquet(tmp_path / "data/images/manifest.parquet")
    assert len(manifest) == 3 and (manifest["status"] == "ok").all()
    assert manifest["url"].str.startswith(clean_mirror.cvdf_url + "/").all()


@pytest.mark.parametrize("argv, message", [
    (["--limit", "-1"], "--limit: must be at least 0, got -1"),
    (["--rate", "nan"], "--rate: must be a finite number"),
    (["--base-url", "ftp://example.org/oi"], "--base-url: must be an http(s) URL"),
    (["--base-url", "http://[::1"], "--base-url: must be an http(s) URL"),
    (["--connections", "0"], "--connections: must be at least 1"),
])
def test_errors_name_the_flag_the_user_typed(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert fetch("Hamburger", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "data").exists()
