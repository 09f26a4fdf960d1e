"""A local registry that moves, and what ``pipeline.pull`` refuses: a registry folder moved or copied elsewhere
still installs (with ``pipeline.pull``; with plain quilt3 after ``--relink``), a destination under a file, a
link, or inside the registry is refused in one line with nothing written, and a killed pull's staging
folder is swept by the next one."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from package_inputs import expected_sources, one_line_error, run, write_inputs
from s3server import isolated_env

NAME = "tests/moving-ds"


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def quilt3_cli() -> str:
    return str(Path(sys.executable).with_name("quilt3"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A workspace whose local registry holds one version of NAME (and NAME-model)."""
    root = tmp_path_factory.mktemp("registry")
    ws, env = root / "ws", isolated_env(root / "home")
    ws.mkdir()
    write_inputs(ws, {"name": NAME, "registry": ""}, model=True)
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((ws / "data/package.json").read_text())
    return {"root": root, "ws": ws, "env": env, "info": info, "sources": expected_sources(ws)}


def test_a_moved_registry_still_installs_and_relinks_for_plain_quilt3(built: dict, tmp_path: Path) -> None:
    env, info = built["env"], built["info"]
    original = built["ws"] / "data/quilt-registry"
    moved = tmp_path / "elsewhere" / "registry"
    shutil.copytree(original, moved)
    before = tree(moved)
    away = original.with_name("gone")
    original.rename(away)  # the place the manifests point at is no more
    try:
        dest = tmp_path / "pulled"
        result = run(tmp_path, env, "pipeline.pull", NAME, "--registry", str(moved), "--dest", str(dest))
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
        assert len(notes) == 1 and f"python -m pipeline.pull --registry {moved} --relink" in notes[0]
        assert info["top_hash"] in result.stdout
        pulled = tree(dest)
        for key, path in built["sources"].items():
            assert pulled[key] == path.read_bytes(), key
        assert tree(moved) == before  # a pull reads; it never writes into the registry

        # Plain quilt3 cannot (its manifests hold absolute paths) until --relink rewrites them once.
        plain = [quilt3_cli(), "install", NAME, "--registry", moved.as_uri(), "--top-hash", info["top_hash"]]
        failed = subprocess.run([*plain, "--dest", str(tmp_path / "plain-before")], env=env, capture_output=True,
                                text=True, timeout=120)
        assert failed.returncode != 0
        relinked = run(tmp_path, env, "pipeline.pull", "--registry", str(moved), "--relink")
        assert relinked.returncode == 0 and "relinked 2 manifest(s)" in relinked.stdout, relinked.stderr
        again = run(tmp_path, env, "pipeline.pull", "--registry", str(moved), "--relink")
        assert again.returncode == 0 and "nothing to do" in again.stdout
        installed = subprocess.run([*plain, "--dest", str(tmp_path / "plain")], env=env, capture_output=True,
                                   text=True, timeout=120)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert tree(tmp_path / "plain") == pulled
        listed = run(tmp_path, env, "pipeline.pull", NAME, "--registry", str(moved), "--list")
        assert listed.stdout.split()[0] == info["top_hash"]  # the same version, still the only one

        # Once relinked, a pull from there says nothing about moving.
        clean = run(tmp_path, env, "pipeline.pull", NAME + "-model", "--registry", str(moved), "--dest",
                    str(tmp_path / "model"))
        assert clean.returncode == 0 and "note:" not in clean.stderr, clean.stderr
        assert (tmp_path / "model/model.pt").read_bytes() == (built["ws"] / "models/model.pt").read_bytes()
    finally:
        away.rename(original)


@pytest.mark.parametrize("case", ["under a file", "link to an empty folder", "inside the registry", "not empty"])
def test_a_bad_destination_is_refused_with_nothing_written(built: dict, tmp_path: Path, case: str) -> None:
    registry = built["ws"] / "data/quilt-registry"
    before = tree(registry)
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full/keep.txt").write_text("mine")
    dest, says = {
        "under a file": (tmp_path / "a-file/sub/dir", "is a file, not a folder"),
        "link to an empty folder": (tmp_path / "link", "is a symbolic link"),
        "inside the registry": (registry / "pulled", "is inside the registry"),
        "not empty": (tmp_path / "full", "is not an empty folder"),
    }[case]
    listing = sorted(p.name for p in tmp_path.iterdir())
    result = run(built["ws"], built["env"], "pipeline.pull", NAME, "--registry", "data/quilt-registry",
                 "--dest", str(dest))
    assert result.returncode == 2
    assert says in one_line_error(result) and str(dest) in one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no staging folder, nothing new
    assert (tmp_path / "a-file").read_text() == "mine" and not any((tmp_path / "empty").iterdir())
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert tree(registry) == before


def test_a_killed_pulls_staging_folder_is_swept_by_the_next(built: dict, tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # exited: what it left is a leftover
    leftover = tmp_path / f".pulled.{pid}.pull"
    (leftover / "splits").mkdir(parents=True)
    (leftover / "splits/half.jpg").write_bytes(b"\xff\xd8")
    other = tmp_path / f".other.{os.getpid()}.pull"  # a live process's (this one): left alone
    other.mkdir()
    dest = tmp_path / "pulled"
    result = run(built["ws"], built["env"], "pipeline.pull", NAME, "--registry", "data/quilt-registry",
                 "--dest", str(dest))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not leftover.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "pulled"]
