"""The shared request rate, measured where it matters: arrival times at the server.

    python bench/rate_bench.py                  # parts a and b: download.rate 20/s, 10 rounds each (~4 minutes)
    python bench/rate_bench.py --parts c        # the old comparison: 2 processes and 1, nothing else running

Every contender is the real download stage (``python -m pipeline.stages.download``, a process tree of its own)
against the local mirror, which runs in this script's process and logs when each request arrived (Python's
garbage collector off during each round, so that a collection pausing the mirror cannot stamp the requests
queued meanwhile as a burst the network never carried).

a. **Two runs on one scheduler**: a ``dask scheduler`` and ``dask worker --nworkers 2`` started beforehand on
   127.0.0.1; two stages join it at once, each asking ``download.rate`` for its half of the photos. One rate
   must reach the server from both together, not one each.
b. **One local process on a loaded machine**: ``runtime.download_processes: 1`` while a CPU burner (a Python
   process spinning) runs beside it, all the photos.
c. **One run, 2 processes and 1**, interleaved (the first design's comparison).

For each round: requests, the most arrivals in any closed 1-second window (the limit is rate + 1: a window
holds both of its ends), the headroom (the tightest span of rate + 2 consecutive arrivals, less one second:
how much more the delays between the board and the server could have differed before rate + 2 fitted in a
second), the achieved rate (between the first and the last arrival), the load average at the end and the CPU
seconds other processes used during the round (the machine is shared).
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dask_bench import Cluster, CpuMeter  # noqa: E402

from pipeline.core.base.io import write_parquet  # noqa: E402
from pipeline.core.net.sources import layout  # noqa: E402
from pipeline.mirror import Mirror  # noqa: E402
from pipeline.mirror.log import max_in_window  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO), "PIPELINE_PROGRESS_SECONDS": "3600"}


@dataclass
class Round:
    part: str
    round: int
    requests: int
    max_window: int
    headroom_ms: float
    rate: float
    load: float
    other_cpu: float


def selection(mirror: Mirror) -> pd.DataFrame:
    tables = [pd.read_csv(f"{mirror.base_url}/{p}", dtype={"ImageID": str}) for p in layout("v6").images.values()]
    images = pd.concat(tables, ignore_index=True)
    images = images[images["ImageID"].isin(mirror.truth["ImageID"])].sort_values("ImageID")
    return images.assign(Label="Hamburger").reset_index(drop=True)


def headroom(arrivals: list[float], rate: float) -> float:
    """Milliseconds by which the tightest ``rate + 2`` consecutive arrivals miss fitting in one second."""
    n = int(rate) + 2
    spans = [arrivals[k + n - 1] - arrivals[k] for k in range(len(arrivals) - n + 1)]
    return 1e3 * (min(spans) - 1.0) if spans else float("inf")


def workspace(folder: Path, mirror: Mirror, selected: pd.DataFrame, rate: float, runtime: dict) -> Path:
    write_parquet(selected, folder / "data" / "selected.parquet")
    (folder / "params.yaml").write_text(yaml.safe_dump({
        "source": {"base_url": mirror.base_url, "cvdf_url": mirror.cvdf_url},
        "download": {"rate": rate}, "runtime": runtime}))
    return folder


def measure(part: str, round_: int, mirror: Mirror, folders: list[Path], rate: float) -> Round:
    """The stage in each folder, all started at once; the arrivals of their requests at the mirror."""
    mirror.clear_requests()
    gc.collect()
    gc.disable()
    try:
        with CpuMeter() as cpu:
            runs = [subprocess.Popen([sys.executable, "-m", "pipeline.stages.download"], cwd=folder, env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    for folder in folders]
            errors = [run.communicate()[1] for run in runs]
    finally:
        gc.enable()
    for run, err in zip(runs, errors):
        if run.returncode:
            raise SystemExit(f"{part}: exit code {run.returncode}\n{err[-2000:]}")
    arrivals = sorted(r.t for r in mirror.requests if r.path.startswith("/flickr/"))
    return Round(part, round_, len(arrivals), max_in_window(arrivals), headroom(arrivals, rate),
                 (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), os.getloadavg()[0], cpu.other)


@contextmanager
def nothing() -> Iterator[None]:
    yield


@contextmanager
def cpu_burner() -> Iterator[None]:
    """A process that spins on a core for as long as the block runs."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        burner.kill()
        burner.wait()


def two_runs_on_one_scheduler(args: argparse.Namespace, mirror: Mirror, selected: pd.DataFrame,
                              out: Path) -> list[Round]:
    cluster = Cluster(args.workers)
    runtime = {"engine": "dask", "scheduler": cluster.address, "connections": args.connections,
               "shard_size": args.shard_size}
    halves = [selected.iloc[: len(selected) // 2], selected.iloc[len(selected) // 2:]]
    rounds = []
    try:
        for round_ in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory(dir=out) as folder:
                folders = [workspace(Path(folder) / f"run{i}", mirror, half, args.rate, runtime)
                           for i, half in enumerate(halves)]
                rounds.append(report(measure("a. two runs, one scheduler", round_, mirror, folders, args.rate)))
    finally:
        cluster.close()
    return rounds


def one_process(part: str, processes: int,
                beside: Callable[[], AbstractContextManager[None]]) -> Callable[..., list[Round]]:
    """The rounds of one run at a time with ``processes`` download processes, ``beside`` running meanwhile."""
    def rounds(args: argparse.Namespace, mirror: Mirror, selected: pd.DataFrame, out: Path) -> list[Round]:
        runtime = {"download_processes": processes, "connections": args.connections, "shard_size": args.shard_size}
        found = []
        with beside():
            for round_ in range(1, args.runs + 1):
                with tempfile.TemporaryDirectory(dir=out) as folder:
                    where = workspace(Path(folder), mirror, selected, args.rate, runtime)
                    found.append(report(measure(part, round_, mirror, [where], args.rate)))
        return found
    return rounds


PARTS = {"a": [two_runs_on_one_scheduler],
         "b": [one_process("b. one process, CPU burner beside it", 1, cpu_burner)],
         "c": [one_process("c. 2 processes", 2, nothing), one_process("c. 1 process", 1, nothing)]}


def report(r: Round) -> Round:
    print(f"{r.part}, round {r.round}: {r.requests} requests, at most {r.max_window} in any second, headroom "
          f"{r.headroom_ms:.0f} ms, {r.rate:.2f}/s (load {r.load:.1f}, others' CPU {r.other_cpu:.1f} s)", flush=True)
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="ab", help="a: two runs on one scheduler; b: one process beside a CPU "
                        "burner; c: 2 processes and 1 (default ab)")
    parser.add_argument("--rate", type=float, default=20.0, help="download.rate (default 20)")
    parser.add_argument("--runs", type=int, default=10, help="rounds of each part (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="dask workers in part a (default 2)")
    parser.add_argument("--images-per-label", type=int, default=60, help="mirror size: 2 labels (default 60)")
    parser.add_argument("--connections", type=int, default=16, help="runtime.connections (default 16)")
    parser.add_argument("--shard-size", type=int, default=10, help="runtime.shard_size (default 10: many shards)")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "rate"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds: list[Round] = []
    with Mirror(root=out / "mirror", labels=("Hamburger", "Sandwich"), images_per_label=args.images_per_label,
                faults=False, seed=0) as mirror:
        selected = selection(mirror)
        for part in args.parts:
            for rounds_of in PARTS[part]:
                rounds += rounds_of(args, mirror, selected, out)
    shutil.rmtree(out / "mirror", ignore_errors=True)
    print(f"\ndownload.rate {args.rate:g}/s, limit per 1-s window {args.rate + 1:g}; {os.cpu_count()} CPUs\n")
    print("| part | round | requests | most in any 1 s | headroom ms | achieved /s | load | others' CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rounds:
        print(f"| {r.part} | {r.round} | {r.requests} | {r.max_window} | {r.headroom_ms:.0f} | {r.rate:.2f} | "
              f"{r.load:.1f} | {r.other_cpu:.1f} |")
    print()
    for part in dict.fromkeys(r.part for r in rounds):
        mine = [r for r in rounds if r.part == part]
        print(f"{part}: most in any 1 s {max(r.max_window for r in mine)} (limit {args.rate + 1:g}), smallest "
              f"headroom {min(r.headroom_ms for r in mine):.0f} ms, {min(r.rate for r in mine):.2f}-"
              f"{max(r.rate for r in mine):.2f}/s")


if __name__ == "__main__":
    main()
