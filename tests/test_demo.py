"""End to end: ``python -m pipeline.demo`` runs the real DVC pipeline offline, and a second
``dvc repro`` with nothing changed runs nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


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
    assert package["name"] == "openimages/demo-hamburger-sandwich" and len(package["top_hash"]) == 64


def test_second_repro_runs_nothing(demo_workspace: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=demo_workspace, env=_env(),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running stage" not in result.stdout, result.stdout
    assert "didn't change" in result.stdout or "up to date" in result.stdout.lower(), result.stdout
