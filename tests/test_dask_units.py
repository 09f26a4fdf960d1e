"""The cluster's rate board (pipeline/stages/download/cluster.py), the local engines' call shape and the
engine settings, without a cluster and without the wall clock.

The :class:`Pacer` that lives on the scheduler is run on a fake clock whose sleeps wake late, as a busy
scheduler's do: its grants keep every 1-second window at rate + 1, reach the rate, go first come first
served, skip callers that went away and tell the ones still waiting when the run ends. The catch-up it
allows is shown to be what keeps the rate: the local limiter's 0.04 loses it under the same late wake-ups.
Measured rates at a real server are in the benchmark (bench/dask_bench.py) and the Dask tests.
"""
from __future__ import annotations

import asyncio
import bisect
import os
import random
from pathlib import Path

import pytest
import yaml

from pipeline.core.engine import open_engine
from pipeline.core.errors import PipelineFailure, UserError
from pipeline.core.params import RuntimeParams, load_params
from pipeline.stages.download.cluster import CLUSTER_CATCH_UP, Pacer, RunEnded
from pipeline.stages.download.ratelimit import CATCH_UP


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    return max(bisect.bisect_right(times, t + window) - i for i, t in enumerate(times))


class LateClock:
    """A fake monotonic clock; each sleep wakes up to ``late`` seconds after it should (seeded)."""

    def __init__(self, late: float, seed: int) -> None:
        self.now, self.late, self.rng = 100.0, late, random.Random(seed)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)  # callers granted just before run now, and see the time of their grant
        self.now += seconds + self.rng.uniform(0.0, self.late)


async def grants(pacer: Pacer, clock: LateClock, callers: int, seconds: float) -> dict[int, list[float]]:
    """Each caller asks for a turn again as soon as it has one (more work than the rate), until ``seconds``."""
    got: dict[int, list[float]] = {caller: [] for caller in range(callers)}
    end = clock.now + seconds

    async def caller(number: int) -> None:
        while clock.now < end:
            await pacer.turn()
            got[number].append(clock.now)

    await asyncio.gather(*(caller(n) for n in range(callers)))
    return got


def run(rate: float, callers: int, late: float, seed: int, catch_up: float = CLUSTER_CATCH_UP,
        seconds: float = 10.0) -> dict[int, list[float]]:
    clock = LateClock(late, seed)
    pacer = Pacer(1.0 / rate, clock=clock, sleep=clock.sleep, catch_up=catch_up)
    return asyncio.run(grants(pacer, clock, callers, seconds))


@pytest.mark.parametrize("seed", range(20))
def test_late_wakeups_keep_the_window_and_the_rate(seed: int) -> None:
    """150/s for 4 workers, the pacer waking up to 1.5 ms late (a busy scheduler): never more than 151 in any
    second, at least 95% of the rate, and every worker served in turn."""
    got = run(150.0, 4, late=0.0015, seed=seed)
    times = sorted(t for caller in got.values() for t in caller)
    assert max_in_window(times) <= 151
    assert (len(times) - 1) / (times[-1] - times[0]) >= 0.95 * 150
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= (1 - CLUSTER_CATCH_UP) / 150 - 1e-9
    counts = sorted(len(caller) for caller in got.values())
    assert counts[-1] - counts[0] <= 1, "first come, first served: no worker starves"


def test_the_local_catch_up_would_lose_the_rate_on_a_busy_scheduler() -> None:
    """Why the cluster's board allows more catch-up than a local one: with 0.04 the same late wake-ups cost
    a tenth of the rate (the check above would catch that)."""
    rates = []
    for seed in range(5):
        times = sorted(t for caller in run(150.0, 4, late=0.0015, seed=seed, catch_up=CATCH_UP).values()
                       for t in caller)
        rates.append((len(times) - 1) / (times[-1] - times[0]))
    assert max(rates) < 0.95 * 150


def test_a_worker_that_stops_asking_strands_nothing() -> None:
    """One caller alone after the others left gets every turn: the rate is one queue, not fixed shares."""
    clock = LateClock(0.0, 0)
    pacer = Pacer(0.1, clock=clock, sleep=clock.sleep)
    times: list[float] = []

    async def caller(turns: int) -> None:
        for _ in range(turns):
            await pacer.turn()
            times.append(clock.now)

    async def both() -> None:
        await asyncio.gather(caller(5), caller(25))

    asyncio.run(both())
    assert len(times) == 30
    # 10/s all the way, also once one caller is done (the idle board's first slot counts as taken a little
    # earlier: take_slot's catch-up)
    assert times[-1] - times[0] == pytest.approx((29 - CLUSTER_CATCH_UP) * 0.1)


def test_waiters_that_went_away_are_skipped_and_the_others_told_when_the_run_ends() -> None:
    clock = LateClock(0.0, 0)
    pacer = Pacer(1.0, clock=clock, sleep=clock.sleep)

    async def scenario() -> tuple[list[str], BaseException | None]:
        order: list[str] = []
        await pacer.turn()  # the first turn is free: the board was idle
        first = asyncio.create_task(pacer.turn())
        gone = asyncio.create_task(pacer.turn())
        await asyncio.sleep(0)
        gone.cancel()  # a killed worker's request
        await first
        order.append(f"first at {clock.now - 100:.0f}")
        waiting = asyncio.create_task(pacer.turn())
        await asyncio.sleep(0)
        pacer.close()
        try:
            await waiting
        except RunEnded as exc:
            return order, exc
        return order, None

    order, ended = asyncio.run(scenario())
    assert order == ["first at 1"]
    assert isinstance(ended, RunEnded)


# ---------------------------------------------------------------------------------------------------------
# The engine's one call shape, locally (the Dask engine is shown in test_dask.py)


def square_and_tell(offset: int, job: int, emit) -> int:
    """A task: ``context`` is an offset; tells home about its job, then returns."""
    emit({"job": job})
    if job < 0:
        raise UserError(f"bad job {job}")
    if job == 99:
        os._exit(1)  # a worker process that dies (out of memory, kill -9)
    return job * job + offset


@pytest.mark.parametrize("processes", [1, 2])
def test_local_engines_run_every_job_and_bring_results_and_messages_home(processes: int) -> None:
    messages, finished = [], []
    with open_engine(RuntimeParams(), processes, "test") as engine:
        assert engine.kind == ("inline" if processes == 1 else "pool")
        results = engine.run(square_and_tell, 10, list(range(6)), on_message=messages.append,
                             on_result=lambda index, result: finished.append((index, result)))
    assert results == [10, 11, 14, 19, 26, 35]
    assert sorted(m["job"] for m in messages) == list(range(6))
    assert sorted(finished) == list(enumerate(results))


@pytest.mark.parametrize("processes", [1, 2])
def test_a_task_error_reaches_the_stage_as_it_was_raised(processes: int) -> None:
    with open_engine(RuntimeParams(), processes, "test") as engine, pytest.raises(UserError, match="bad job -1"):
        engine.run(square_and_tell, 0, [1, -1, 2])


def test_a_pool_process_that_dies_is_one_line_failure() -> None:
    with open_engine(RuntimeParams(), 2, "test") as engine, pytest.raises(PipelineFailure, match="a test process died"):
        engine.run(square_and_tell, 0, [1, 99, 2])


# ---------------------------------------------------------------------------------------------------------
# The settings: outside the tracked params, validated like the rest


@pytest.mark.parametrize("runtime, message", [
    ({"engine": "spark"}, "runtime.engine must be one of 'local' or 'dask', got 'spark'"),
    ({"scheduler": "http://host:8786"}, "runtime.scheduler must look like tcp://host:8786"),
    ({"scheduler": "tcp://host:port"}, "runtime.scheduler must look like tcp://host:8786"),
    ({"store": "/mnt/shared"}, "runtime.store must be empty (data/ on a path every worker shares) or an object store"),
    ({"store": "https://bucket.example.com/x"}, "runtime.store must be empty"),
    ({"store": "s3://"}, "runtime.store must be empty"),
    ({"dask_workers": -1}, "runtime.dask_workers must be at least 0"),
])
def test_bad_engine_settings_are_one_line_naming_the_key(tmp_path: Path, runtime: dict, message: str) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"runtime": runtime}))
    with pytest.raises(UserError) as info:
        load_params(tmp_path / "params.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_engine_settings_are_runtime_only() -> None:
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    assert (params.runtime.engine, params.runtime.scheduler, params.runtime.store) == ("local", "", "")
    for key in ("engine", "scheduler", "dask_workers", "store"):
        assert all(key not in section for section in params.tracked().values() if isinstance(section, dict))
    good = RuntimeParams(engine="dask", scheduler="tcp://10.0.0.5:8786", store="s3://bucket/prefix/")
    assert good.store == "s3://bucket/prefix" and RuntimeParams(scheduler="scheduler:8786").scheduler
