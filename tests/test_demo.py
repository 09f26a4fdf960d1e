"""End to end: ``python -m pipeline.demo`` runs the real DVC pipeline offline in a git workspace and commits
the run, a second ``dvc repro`` with nothing changed runs nothing, and ``dvc push`` / ``dvc pull`` through an
S3 remote (moto_server) restore the pipeline's outputs in a fresh clone of the workspace."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from s3server import S3Server, isolated_env
from trainkit import needs_offline_weights

pytestmark = [pytest.mark.slow, needs_offline_weights]  # the demo fine-tunes the ImageNet MobileNetV2
GIT_AUTHOR = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
              "GIT_COMMITTER_EMAIL": "t@example.com"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture(scope="module")
def demo_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workspace = tmp_path_factory.mktemp("demo") / "ws"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.demo", "--workspace", str(workspace)],
        env=_env(), capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return workspace


def test_demo_builds_every_output(demo_workspace: Path) -> None:
    ws = demo_workspace
    checkpoint = torch.load(ws / "models/model.pt", map_location="cpu", weights_only=True)
    assert sorted(checkpoint["labels"]) == ["Hamburger", "Sandwich"]
    evaluation = json.loads((ws / "metrics/eval.json").read_text())
    assert evaluation["top1"] > 0.6, evaluation  # two visually distinct classes: well above chance
    assert (ws / "reports/dataset/index.html").stat().st_size > 0
    for split in ("train", "val", "test"):
        for label in ("Hamburger", "Sandwich"):
            assert any((ws / "data/splits" / split / label).glob("*.jpg")), (split, label)
    package = json.loads((ws / "data/package.json").read_text())
    assert package["name"] == "openimages/hamburger-sandwich" and len(package["top_hash"]) == 64
    assert package["model"]["name"] == "openimages/hamburger-sandwich-model"


def test_the_workspace_is_a_committed_git_repository_with_relative_paths(demo_workspace: Path) -> None:
    ws = demo_workspace
    repo = Path(__file__).resolve().parent.parent
    assert (ws / "dvc.yaml").read_text() == (repo / "dvc.yaml").read_text()  # the repository's own
    git = subprocess.run(["git", "status", "--porcelain"], cwd=ws, env=_env(), capture_output=True, text=True)
    assert git.returncode == 0 and git.stdout == "", git.stdout + git.stderr  # the run is committed
    tracked = subprocess.run(["git", "ls-files"], cwd=ws, env=_env(), capture_output=True, text=True).stdout.split()
    assert {"dvc.lock", "metrics/eval.json", "dvclive/metrics.json", "pipeline/core/base/params.py"} <= set(tracked)
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=ws, env=_env(),
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    head = json.loads(shown.stdout)[1]["data"]  # [workspace, HEAD]
    assert isinstance(head["metrics"]["metrics/eval.json"]["data"]["top1"], float)
    for path in [*head["deps"], *head["outs"]]:
        assert not Path(path).is_absolute() and ".." not in Path(path).parts, path


def test_second_repro_runs_nothing(demo_workspace: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=demo_workspace, env=_env(),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running stage" not in result.stdout, result.stdout
    assert "didn't change" in result.stdout or "up to date" in result.stdout.lower(), result.stdout


def _cached_outputs(workspace: Path) -> dict[str, bytes]:
    """Every file of every cached stage output (what ``dvc push`` sends), relative path -> bytes."""
    spec = yaml.safe_load((workspace / "dvc.yaml").read_text())
    files: dict[str, bytes] = {}
    for stage in spec["stages"].values():
        for out in stage.get("outs", []):
            name, options = (out, {}) if isinstance(out, str) else next(iter(out.items()))
            if options.get("cache", True) is False:
                continue
            root = workspace / name
            for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                files[path.relative_to(workspace).as_posix()] = path.read_bytes()
    return files


def test_dvc_push_then_pull_restores_the_pipeline_outputs(demo_workspace: Path, s3_server: S3Server,
                                                          tmp_path: Path) -> None:
    s3_server.create_bucket("dvc-demo")
    env = isolated_env(tmp_path / "home", AWS_ACCESS_KEY_ID="AKIAMOTOTESTKEY00001",
                       AWS_SECRET_ACCESS_KEY="moto-test-secret-not-a-real-one", AWS_DEFAULT_REGION="us-east-1",
                       DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site"))
    env["PATH"] = _env()["PATH"]

    def dvc(cwd: Path, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, f"dvc {' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        return result.stdout

    dvc(demo_workspace, "remote", "add", "-f", "-d", "storage", "s3://dvc-demo/pipeline")
    dvc(demo_workspace, "remote", "modify", "storage", "endpointurl", s3_server.endpoint)
    dvc(demo_workspace, "push")

    # a fresh clone holds what git holds: code, dvc.yaml, dvc.lock, params.yaml, the DVC config, the metrics
    # and plots (uncached, committed)
    for cmd in (["git", "add", ".dvc/config"], ["git", "commit", "-q", "-m", "DVC remote on S3"],
                ["git", "clone", "-q", str(demo_workspace), str(tmp_path / "fresh")]):
        done = subprocess.run(cmd, cwd=demo_workspace, env={**_env(), **GIT_AUTHOR}, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    fresh = tmp_path / "fresh"
    assert not (fresh / "models").exists() and (fresh / "metrics/eval.json").is_file()
    dvc(fresh, "pull")
    expected = _cached_outputs(demo_workspace)
    assert "models/model.pt" in expected and any(k.startswith("data/splits/train/") for k in expected)
    assert _cached_outputs(fresh) == expected
    # all that is missing is the metadata (cache: false: re-downloadable, too big for a remote); the audit's
    # embeddings cache is no output, so its absence leaves the audit (and all after it) up to date
    status = json.loads(dvc(fresh, "status", "--json"))
    assert status == {
        "metadata": [{"changed outs": {"data/metadata": "deleted"}}],
        "select": [{"changed deps": {f"data/metadata/{name}": "deleted" for name in
                                     ("boxes", "images.parquet", "classes.parquet", "hierarchy.json")}}],
    }, status
