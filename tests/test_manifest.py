"""The atomic-output helpers every stage uses."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.base.io import atomic_path, replace_dir


def test_replace_dir_swaps_in_only_this_runs_files_and_sweeps_killed_runs(tmp_path: Path) -> None:
    out = tmp_path / "crops"
    (out / "old-label").mkdir(parents=True)
    (out / "old-label" / "stale.jpg").write_bytes(b"x")
    killed = tmp_path / ".crops.99999.new"  # what a kill -9 of an earlier run left behind
    (killed / "a").mkdir(parents=True)
    with replace_dir(out) as new:
        (new / "Hamburger").mkdir()
        (new / "Hamburger" / "1.jpg").write_bytes(b"y")
        assert not (out / "Hamburger").exists()  # readers still see the old folder while it is built
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["Hamburger", "Hamburger/1.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crops"]


def test_replace_dir_keeps_the_old_folder_on_error(tmp_path: Path) -> None:
    out = tmp_path / "splits"
    out.mkdir()
    (out / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError), replace_dir(out) as new:
        (new / "half.txt").write_text("new")
        raise RuntimeError("stage failed")
    assert [p.name for p in tmp_path.iterdir()] == ["splits"] and (out / "kept.txt").read_text() == "old"


def test_atomic_path_leaves_old_file_on_error_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "metrics" / "eval.json"
    with atomic_path(target) as tmp:
        tmp.write_text("1")
    assert target.read_text() == "1"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError
    assert target.read_text() == "1" and [p.name for p in target.parent.iterdir()] == ["eval.json"]
