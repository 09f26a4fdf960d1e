"""The scale benchmark's smoke run: its first steps at 40 photos, so the script cannot rot between big runs.

The big runs (1k, 10k, 100k photos) are benchmarks, never tests: BENCHMARKS.md has their numbers.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import scale_bench  # noqa: E402


def test_every_step_runs_a_module_that_exists():
    modules = [argv[argv.index("-m") + 1] for _, argv in scale_bench.steps("openimages/a-b", "reg") if "-m" in argv]
    assert {f"pipeline.stages.{stage}" for stage in scale_bench.STAGES} <= set(modules)
    assert [m for m in modules if importlib.util.find_spec(m) is None] == []


def test_smoke_run_measures_the_first_steps_at_40_photos(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "scale_bench.py"), "--sizes", "40", "--steps", "4",
                           "--pool", "3", "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = pd.read_csv(out / "scale.csv")
    assert list(rows["step"]) == ["metadata", "select", "download", "crop"]
    assert (rows["rc"] == 0).all() and (rows["n"] == 40).all()
    assert rows["photos"].between(20, 60).all()  # ~40 chosen, the same count on every row
    assert (rows["cpu_s"] > 0).all() and (rows["peak_rss_mib"] > 0).all()
    assert rows.set_index("step").loc["download", "files_added"] >= rows["photos"].iloc[0]
    assert json.loads((out / "scale.json").read_text())[0]["step"] == "metadata"
    assert (out / "scale.png").stat().st_size > 0
    assert "| crop |" in done.stdout
    assert not (out / "ws-40").exists()  # the workspace goes unless --keep


def test_a_kept_workspace_resumes_from_a_stage_and_keeps_the_earlier_rows(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = [sys.executable, str(REPO / "bench" / "scale_bench.py"), "--sizes", "40", "--pool", "3", "--keep",
              "--out", str(out)]
    first = subprocess.run([*script, "--steps", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    done = subprocess.run([*script, "--resume-from", "crop", "--last-stage", "clean"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = pd.read_csv(out / "scale.csv").set_index("step")
    assert list(rows.index[:5]) == ["metadata", "select", "download", "crop", "clean"]
    assert "dvc status, to clean" in rows.index and (rows["rc"] == 0).all()
    assert rows["photos"].nunique() == 1 and rows.loc["clean", "cpu_ms_per_photo"] > 0
