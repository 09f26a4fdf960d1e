"""Progress on long work also when the output is not a terminal: a short line on stderr every few seconds.

Unit tests drive :class:`Progress` with a fake clock; then the download, crop and train stages run as real
commands with stdout and stderr piped (as in CI or ``nohup``), and their progress lines must be there.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from crop_inputs import write_inputs
from download_inputs import write_selection
from trainkit import make_splits, write_params

from pipeline.core.base.progress import Progress

REPO = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_interval_when_not_a_terminal() -> None:
    clock, out = Clock(), io.StringIO()
    with Progress(100, "download", "img", stream=out, every=5.0, clock=clock) as bar:
        for _ in range(100):
            clock.now += 0.2
            bar.update()
            bar.note("ok=3")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # at 5, 10 and 15 s, then the final count at 20 s
    assert lines[0].startswith("download: 25/100 img (25%), 5.0 img/s, about 15 s left; ok=3")
    assert lines[-1].startswith("download: 100/100 img (100%)")
    assert "\r" not in out.getvalue()


def test_work_shorter_than_one_interval_stays_quiet_and_a_disabled_bar_prints_nothing() -> None:
    clock, out = Clock(), io.StringIO()
    with Progress(10, "crop", "img", stream=out, every=5.0, clock=clock) as bar:
        clock.now += 1.0
        bar.update(10)
    with Progress(10, "crop", "img", stream=out, every=0.0, clock=clock, enabled=False) as bar:
        clock.now += 10.0
        bar.update(10)
    assert out.getvalue() == ""


def test_a_terminal_gets_tqdms_bar() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    with Progress(3, "train", "batch", stream=out) as bar:
        bar.update(3)
    assert "\r" in out.getvalue() and "3/3" in out.getvalue()


def run_piped(module: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIPELINE_PROGRESS_SECONDS": "0"}
    done = subprocess.run([sys.executable, "-m", module], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_the_download_stage_reports_progress_into_a_pipe(clean_mirror, workspace) -> None:
    images = write_selection(clean_mirror)
    workspace.write_params({**clean_mirror.params_overrides(), "download": {"rate": 0}})
    lines = [line for line in run_piped("pipeline.stages.download", workspace.path).stderr.splitlines()
             if line.startswith("download: ")]
    assert len(lines) >= len(images)  # one per image at an interval of 0
    assert lines[-1].startswith(f"download: {len(images)}/{len(images)} img (100%)") and "ok=" in lines[-1]


def test_the_crop_stage_reports_progress_into_a_pipe(mirror, workspace) -> None:
    write_inputs(mirror, workspace.path)
    workspace.write_params({"crop": {"min_side": 16}, "runtime": {"crop_processes": 1}})
    lines = [line for line in run_piped("pipeline.stages.crop", workspace.path).stderr.splitlines()
             if line.startswith("crop: ")]
    assert lines and "(100%)" in lines[-1]


def test_the_train_stage_reports_progress_into_a_pipe(workspace) -> None:
    make_splits(workspace.path / "data/splits", {"train": 8, "val": 4})
    write_params(workspace.path, epochs=1, freeze_epochs=0, batch_size=4)
    done = run_piped("pipeline.stages.train", workspace.path)
    batches = [line for line in done.stderr.splitlines() if line.startswith("epoch 1/1 (unfrozen): ")]
    assert batches and "batch" in batches[-1]
    assert "epoch 1/1 (unfrozen): train_loss" in done.stdout  # the epoch's summary
