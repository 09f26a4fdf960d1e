"""The atomic-output helpers every stage uses, and the manifests' contracts between stages."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.base import manifests
from pipeline.core.base.errors import UserError
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


def test_a_manifest_lacking_a_column_is_one_line_naming_the_stage_to_rerun() -> None:
    old = pd.DataFrame({"ImageID": ["0123456789abcdef"], "BoxIndex": [0]})  # an older clean manifest
    with pytest.raises(UserError, match=r"lacks column\(s\) keep, dup_group: re-run the clean stage"):
        manifests.CLEAN.require(old, ["ImageID", "keep", "dup_group"])
    assert manifests.CLEAN.require(old, ["ImageID"]) is old
    with pytest.raises(ValueError, match="no column"):  # a consumer naming what no producer writes: a bug
        manifests.CLEAN.require(old, ["ImageId"])


def test_the_contracts_chain_as_the_stages_do() -> None:
    assert manifests.CLEAN.columns[:len(manifests.CROPS.columns)] == manifests.CROPS.columns
    assert [m.stage for m in (manifests.SELECTED, manifests.IMAGES, manifests.CROPS, manifests.CLEAN,
                              manifests.LEDGER, manifests.SPLITS)] == ["select", "download", "crop", "clean",
                                                                        "audit", "split"]
