"""Two runs of one stage in one workspace, and kill -9 of a stage with a process pool.

Two runs must serialise (the stage lock) so that no interleaving loses or mixes data. That a stage takes its
lock is shown exactly: a run started while another process holds the lock says that it waits, and writes
nothing until the lock is free. (Two runs released together by a barrier, a few rounds, show that both
finish with the outputs of a reference run and leave no build folder; such races alone did not catch a stage
without its lock in 60 rounds, its outputs being swapped in whole.) A killed stage must leave no worker
process behind.
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psutil
import yaml
from clean_inputs import synthetic_rows, write_inputs
from crop_inputs import write_inputs as write_crop_inputs

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.io import read_parquet, write_parquet
from pipeline.stages.crop.__main__ import main as crop_main
from pipeline.stages.metadata.__main__ import main as metadata_main
from pipeline.stages.split.__main__ import main as split_main

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 3  # the lock itself is shown by test_each_stage_waits_for_a_run_holding_its_lock
FORK = multiprocessing.get_context("fork")  # the stage code is already imported: a fork costs milliseconds


def _run_released(main: Callable, barrier: multiprocessing.Barrier) -> None:
    """A forked run of ``main``, started when both runs of the round are ready; its exit code is ours."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        barrier.wait(timeout=60)
        code = run_cli(main, [])
    os._exit(code)


def two_at_once(main: Callable) -> list[int]:
    barrier = FORK.Barrier(2)
    runs = [FORK.Process(target=_run_released, args=(main, barrier)) for _ in range(2)]
    for process in runs:
        process.start()
    for process in runs:
        process.join(timeout=120)
        if process.exitcode is None:  # never leave a process behind, even when the test fails
            process.kill()
            process.join()
    return [process.exitcode for process in runs]


def _run_reporting_to(main: Callable, stderr_fd: int) -> None:
    """A forked run of ``main`` whose stderr is ``stderr_fd``; its exit code is ours."""
    with contextlib.redirect_stdout(io.StringIO()), open(stderr_fd, "w", buffering=1) as stderr, \
            contextlib.redirect_stderr(stderr):
        code = run_cli(main, [])
    os._exit(code)


def test_each_stage_waits_for_a_run_holding_its_lock(mirror, workspace) -> None:
    """metadata and split, each started while another process holds its lock: it says so, writes nothing, and
    finishes once the lock is free. (The run is forked from this process, so that it runs the code under test
    here; the holder is a process of its own, whose lock no fork inherits.)"""
    write_inputs(workspace.path, synthetic_rows(12, ("Hamburger", "Sandwich")))  # split's inputs and params
    workspace.write_params({**yaml.safe_load(Path("params.yaml").read_text()), **mirror.params_overrides()})
    for name, main, output in (("metadata", metadata_main, paths.METADATA_STAMP),
                               ("split", split_main, paths.SPLITS_MANIFEST)):
        holder = subprocess.Popen([sys.executable, "-c", "import sys\nfrom pipeline.core.base.locks import stage_lock\n"
                                   f"with stage_lock({name!r}):\n    print('held', flush=True)\n    sys.stdin.readline()"],
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        read_end, write_end = os.pipe()
        run = FORK.Process(target=_run_reporting_to, args=(main, write_end))
        try:
            assert holder.stdout.readline().strip() == "held"
            run.start()
            os.close(write_end)
            with os.fdopen(read_end) as stderr:
                assert select.select([stderr], [], [], 120)[0], f"{name} said nothing for 120 s"
                first_line = stderr.readline()  # the run reports that it waits (or it ends)
                assert first_line.startswith(f"waiting for another {name} run in this workspace (pid {holder.pid})"), \
                    first_line
                assert run.is_alive() and not output.exists(), f"{name} ran while another run held its lock"
                holder.stdin.write("\n")  # the holder lets go of the lock and ends (a line, not an end of file:
                holder.stdin.flush()      # the forked run holds a copy of this pipe's end)
                assert holder.wait(timeout=30) == 0
                stderr.read()  # until the run ends: it must never write to a closed pipe
            run.join(timeout=120)
            assert run.exitcode == 0 and output.exists(), f"{name}: exit {run.exitcode}"
        finally:  # never leave a process behind, even when the test fails
            if holder.poll() is None:
                holder.kill()
            holder.wait()
            if run.pid is not None:
                if run.is_alive():
                    run.kill()
                run.join()


def metadata_outputs() -> dict[str, object]:
    boxes = {p.parent.name: len(pd.read_parquet(p)) for p in paths.BOXES_DIR.rglob("*.parquet")}
    return {"boxes": boxes, "images": len(read_parquet(paths.IMAGES_TABLE)),
            "classes": len(read_parquet(paths.CLASSES_TABLE)), "hierarchy": paths.HIERARCHY_JSON.read_bytes()}


def test_two_metadata_runs_at_once_never_lose_boxes(mirror, workspace) -> None:
    workspace.write_params(mirror.params_overrides())
    assert run_cli(metadata_main, []) == 0  # downloads once; every round below converts again
    reference = metadata_outputs()
    assert reference["boxes"]
    for round_ in range(ROUNDS):
        for output in (paths.BOXES_DIR, paths.METADATA_STAMP, paths.IMAGES_TABLE, paths.CLASSES_TABLE):
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        assert two_at_once(metadata_main) == [0, 0], f"round {round_}"
        assert metadata_outputs() == reference, f"round {round_}"
        assert not list(paths.METADATA_DIR.glob(".boxes.*")), f"round {round_}: a build folder was left"


def split_outputs() -> tuple[pd.DataFrame, list[str]]:
    table = pd.read_parquet(paths.SPLITS_MANIFEST)
    files = sorted(str(p.relative_to(paths.SPLITS_DIR)) for p in paths.SPLITS_DIR.rglob("*.jpg"))
    return table, files


def test_two_split_runs_at_once_give_the_same_splits_every_round(tmp_path, monkeypatch) -> None:
    write_inputs(tmp_path, synthetic_rows(40, ("Hamburger", "Sandwich")))
    monkeypatch.chdir(tmp_path)
    assert run_cli(split_main, []) == 0
    table, files = split_outputs()
    assert len(files) == len(table) > 0
    for round_ in range(ROUNDS):
        assert two_at_once(split_main) == [0, 0], f"round {round_}"
        again, again_files = split_outputs()
        assert again.equals(table) and again_files == files, f"round {round_}"
        assert not list(paths.DATA.glob(".splits.*")), f"round {round_}: a build folder was left"


def test_a_second_run_waits_for_the_first_and_says_so(tmp_path, monkeypatch) -> None:
    from pipeline.core.base.locks import stage_lock

    monkeypatch.chdir(tmp_path)
    with stage_lock("split"):
        waiting = subprocess.Popen([sys.executable, "-c", "from pipeline.core.base.locks import stage_lock\n"
                                    "with stage_lock('split'): print('got it')"],
                                   env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        first_line = waiting.stderr.readline()  # blocks until the second run reports that it waits
        assert first_line.startswith(f"waiting for another split run in this workspace (pid {os.getpid()})")
        assert waiting.poll() is None
    out, _ = waiting.communicate(timeout=30)
    assert out.strip() == "got it" and waiting.returncode == 0


def test_a_lock_held_by_a_killed_run_is_free_at_once(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time\nfrom pipeline.core.base.locks import stage_lock\n"
                               "with stage_lock('crop'):\n    print('held', flush=True)\n    time.sleep(600)"],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()
        holder.wait()
    from pipeline.core.base.locks import stage_lock

    with stage_lock("crop"):  # no wait, no stale lock file to clean up
        pass


def test_kill_9_of_crop_leaves_no_worker_behind(mirror, workspace) -> None:
    boxes, downloads = write_crop_inputs(mirror, workspace.path)
    many = pd.concat([boxes.assign(BoxIndex=boxes["BoxIndex"] * 100 + k) for k in range(60)], ignore_index=True)
    write_parquet(many, paths.SELECTED)  # enough boxes that the pool is still busy when it is killed
    workspace.write_params({"crop": {"min_side": 8}, "runtime": {"crop_processes": 2}})
    stage = subprocess.Popen([sys.executable, "-m", "pipeline.stages.crop"], cwd=workspace.path,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    workers: list[psutil.Process] = []
    try:
        parent = psutil.Process(stage.pid)
        deadline = time.monotonic() + 60  # a bound on the wait, not a timing claim
        while len(workers) < 2 and stage.poll() is None and time.monotonic() < deadline:
            workers = parent.children()
            time.sleep(0.01)
        assert len(workers) == 2, "the pool never started"
        os.kill(stage.pid, signal.SIGKILL)
        stage.wait()
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers left running after kill -9: {[p.pid for p in alive]}"
    finally:
        for process in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        if stage.poll() is None:
            stage.kill()
            stage.wait()
    assert not (workspace.path / paths.CROPS_DIR).exists()  # nothing half-made was swapped in


def test_the_next_run_sweeps_what_a_killed_run_left(mirror, workspace) -> None:
    write_crop_inputs(mirror, workspace.path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = workspace.path / paths.DATA / f".crops.{int(dead.stdout)}.new"  # a killed run's half-built folder
    (leftover / "Hamburger").mkdir(parents=True)
    (leftover / "Hamburger" / "half.jpg").write_bytes(b"\xff\xd8")
    workspace.write_params({"crop": {"min_side": 8}, "runtime": {"crop_processes": 1}})
    assert run_cli(crop_main, []) == 0
    assert not leftover.exists()
