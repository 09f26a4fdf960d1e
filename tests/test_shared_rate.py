"""One ``download.rate`` for every run that shares a server: two download runs at once, each its own process
tree, counted at the server (the mirror's request log).

Both runs fetch disjoint parts (60 and 20 photos) of one mirror at ``download.rate: 10``, started together, so
they download side by side for seconds: on one machine (a pool of 2 processes beside an inline run), and on
one ``dask scheduler`` with two ``dask worker`` processes. With a board per run the server would see both
rates added (about 20 in a second while they overlap); with one board per server it sees one. The bounds are
generous (rate + 2 in any second, 1.2x the rate while both run), so a loaded machine cannot make them fail;
the exact numbers are bench/rate_bench.py's.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from s3server import free_port

from pipeline.core.base import paths
from pipeline.core.base.io import read_parquet, write_parquet
from pipeline.core.net.sources import layout
from pipeline.mirror import Mirror
from pipeline.mirror.log import max_in_window

REPO = Path(__file__).resolve().parent.parent
RATE = 10.0
RUNTIME = {"connections": 4, "shard_size": 5, "retries": 2, "backoff": 0.05, "read_timeout": 5.0,
           "connect_timeout": 10.0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """A mirror of its own (no faults, small photos), so that no other test's requests are counted."""
    with Mirror(root=tmp_path_factory.mktemp("shared-rate-mirror"), labels=("Hamburger", "Sandwich"),
                images_per_label=40, size=(96, 72), faults=False, seed=5) as m:
        yield m


def the_images(m: Mirror) -> pd.DataFrame:
    tables = [pd.read_csv(f"{m.base_url}/{path}", dtype={"ImageID": str}) for path in layout("v6").images.values()]
    images = pd.concat(tables, ignore_index=True)
    return images[images["ImageID"].isin(m.truth["ImageID"])].sort_values("ImageID").assign(Label="Hamburger")


def prepare(where: Path, m: Mirror, images: pd.DataFrame, **runtime: object) -> set[str]:
    """A workspace that downloads ``images``; returns their URL paths (how the server's log names them)."""
    write_parquet(images, where / paths.SELECTED)
    params = {"source": {"base_url": m.base_url, "cvdf_url": m.cvdf_url}, "download": {"rate": RATE},
              "runtime": {**RUNTIME, **runtime}}
    (where / "params.yaml").write_text(yaml.safe_dump(params))
    return {"/" + url.split("/", 3)[3] for url in images["OriginalURL"]}


def stage_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}


def run_side_by_side(workspaces: list[Path]) -> None:
    """The download stage in each workspace, all started at once; each must finish (exit 0)."""
    runs = [subprocess.Popen([sys.executable, "-m", "pipeline.stages.download"], cwd=where, env=stage_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for where in workspaces]
    try:
        errors = [run.communicate(timeout=120)[1] for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
            run.wait()
    for where, run, err in zip(workspaces, runs, errors):
        assert run.returncode == 0, f"{where}: {err}"
        assert len(read_parquet(where / paths.IMAGES_MANIFEST)) > 0


def assert_one_rate_for_both(m: Mirror, first: set[str], second: set[str]) -> None:
    """At the server: every photo once, no second over rate + 2, and while both runs were downloading, about
    one rate between them, not two."""
    log = [r for r in m.requests if r.path.startswith("/flickr/")]
    assert sorted(r.path for r in log) == sorted(first | second)
    arrivals = sorted(r.t for r in log)
    a = sorted(r.t for r in log if r.path in first)
    b = sorted(r.t for r in log if r.path in second)
    start, end = max(a[0], b[0]), min(a[-1], b[-1])
    assert start < end, "the two runs never downloaded at the same time: the test shows nothing"
    both = [t for t in arrivals if start <= t <= end]
    assert max_in_window(arrivals) <= RATE + 2, f"{max_in_window(arrivals)} requests in one second"
    if len(both) > 2:
        assert (len(both) - 1) / (both[-1] - both[0]) <= 1.2 * RATE, "each run kept a rate of its own"


def test_two_runs_on_one_machine_share_one_rate(server: Mirror, tmp_path: Path) -> None:
    """A pool of 2 processes and an inline run, at 10/s each, against one server: 10/s together."""
    images = the_images(server)
    workspaces = [tmp_path / "pool", tmp_path / "inline"]
    first = prepare(workspaces[0], server, images.iloc[:60], download_processes=2)
    second = prepare(workspaces[1], server, images.iloc[60:80], download_processes=1)
    assert len(first) == 60 and len(second) == 20
    server.clear_requests()
    run_side_by_side(workspaces)
    assert_one_rate_for_both(server, first, second)


@pytest.fixture
def scheduler() -> Iterator[str]:
    """``dask scheduler`` and two ``dask worker`` processes (no nanny: each worker is the process started
    here), on 127.0.0.1; every one stopped by its pid."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": stage_env()}
    dask = [sys.executable, "-m", "dask"]
    processes = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                   "--no-dashboard"], **quiet)]
    try:
        # 8 threads each: all 16 shards of both runs can run at once, so the second run's shards never queue
        # behind the first's (the scheduler runs what was submitted first first) and the runs overlap
        processes += [subprocess.Popen([*dask, "worker", address, "--nthreads", "8", "--no-nanny", "--no-dashboard"],
                                       **quiet) for _ in range(2)]
        deadline = time.monotonic() + 60
        while True:  # the scheduler needs a moment before it listens
            try:
                client = Client(address, timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the dask scheduler never started"
                time.sleep(0.2)
        with client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_two_runs_on_one_scheduler_share_one_rate(server: Mirror, scheduler: str, tmp_path: Path) -> None:
    """Two stages joining one scheduler, at 10/s each, their shards on two worker processes: 10/s together."""
    images = the_images(server)
    workspaces = [tmp_path / "first", tmp_path / "second"]
    first = prepare(workspaces[0], server, images.iloc[:60], engine="dask", scheduler=scheduler)
    second = prepare(workspaces[1], server, images.iloc[60:80], engine="dask", scheduler=scheduler)
    server.clear_requests()
    run_side_by_side(workspaces)
    assert_one_rate_for_both(server, first, second)
