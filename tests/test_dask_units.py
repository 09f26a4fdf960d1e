"""The cluster's rate boards (pipeline/core/net/rate_cluster.py), the local engines' call shape and the
engine settings, without a cluster and without the wall clock.

The board is replayed under a fake clock, as real workers use it: each worker process books a slot, sleeps
until it (waking late, as a busy machine does), sends, and books the next; replies, wake-ups and the way to
the server each take a little while, and now and then a worker stalls. Every 1-second window at the server
keeps rate + 1, the rate is reached, and a worker that stops early strands nothing. A checker that finds no
fault in a faulty design proves nothing, so the board without its allowance is replayed under wider jitter and
must be caught. Measured rates at a real server are in bench/dask_bench.py and tests/test_dask.py.
"""
from __future__ import annotations

import heapq
import os
import random
from pathlib import Path

import pytest
import yaml

from pipeline.core.base.errors import PipelineFailure, UserError
from pipeline.core.base.params import RuntimeParams, load_params
from pipeline.core.compute.engine import open_engine
from pipeline.core.net.rate import CATCH_UP, board_interval, book_slot
from pipeline.core.net.rate_cluster import LATE_LIMIT, RateBoards, RunEnded
from pipeline.mirror.log import max_in_window


def simulate(rate: float, workers: int, seed: int, jitter: float = 0.005, interval: float | None = None,
             seconds: float = 10.0, stop_after: dict[int, int] | None = None, stalls: float = 0.005) -> list[float]:
    """Arrival times at the server of ``workers`` processes with more work than the rate.

    Worker ``w`` books at time t: its request reaches the board 0.1-1 ms later, the reply comes back as late,
    it sleeps the wait and wakes up to ``jitter`` late (a ``stalls`` share of times up to 0.3 s: GC, a busy
    core); woken
    more than LATE_LIMIT late it books again, else it sends (0-1 ms) and the request reaches the server
    0.1-1 ms later; then it books again. ``stop_after[w]``: worker w stops after that many requests. The board
    books with :func:`book_slot` (what the scheduler's board does for one run), its slots ``interval`` apart (the board's,
    allowance included, unless told otherwise).
    """
    rng = random.Random(seed)
    interval, next_free = interval or board_interval(rate), 0.0
    sent = {w: 0 for w in range(workers)}
    queue = [(rng.uniform(0.1, 0.5), w) for w in range(workers)]  # when each worker first books
    heapq.heapify(queue)
    arrivals: list[float] = []
    while queue:
        asked, w = heapq.heappop(queue)
        if asked > seconds or sent[w] >= (stop_after or {}).get(w, 1 << 30):
            continue
        now = asked + rng.uniform(0.0001, 0.001)  # the request reaches the board
        next_free, wait = book_slot(next_free, now, interval)
        due = now + rng.uniform(0.0001, 0.001) + wait  # the reply is back: sleep until the slot
        late = rng.uniform(0.0, jitter) + (rng.uniform(0.0, 0.3) if rng.random() < stalls else 0.0)
        if wait > 0 and late > LATE_LIMIT:
            heapq.heappush(queue, (due + late, w))  # too late for this slot: book another
            continue
        send = due + late + rng.uniform(0.0, 0.001)
        arrivals.append(send + rng.uniform(0.0001, 0.001))
        sent[w] += 1
        heapq.heappush(queue, (send, w))
    return sorted(arrivals)


def achieved(arrivals: list[float]) -> float:
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


@pytest.mark.parametrize("seed", range(30))
def test_four_workers_keep_every_second_at_rate_plus_one_and_reach_the_rate(seed: int) -> None:
    """150/s for 4 workers that wake up to 5 ms late: never more than 151 in any second at the server, at
    least 97% of the board's rate (late wake-ups cost nothing: the slots are booked exactly)."""
    arrivals = simulate(150.0, 4, seed)
    assert max_in_window(arrivals) <= 151
    assert achieved(arrivals) >= 0.97 / board_interval(150.0)


@pytest.mark.parametrize("rate", [1.0, 5.0, 20.0])
def test_low_rates_too(rate: float) -> None:
    for seed in range(10):
        arrivals = simulate(rate, 4, seed, seconds=30.0)
        assert max_in_window(arrivals) <= rate + 1
        assert achieved(arrivals) >= 0.95 / board_interval(rate)


def test_without_the_allowance_the_server_would_count_rate_plus_two() -> None:
    """The check above can fail: the same board booking exactly 1/rate, under 10 ms of wake-up jitter."""
    worst = max(max_in_window(simulate(150.0, 4, seed, jitter=0.010, interval=1 / 150.0)) for seed in range(10))
    assert worst > 151


def test_a_worker_that_stops_early_strands_nothing() -> None:
    """Two workers, one of which stops after 20 requests: the other alone keeps the whole rate."""
    arrivals = simulate(20.0, 2, seed=1, stop_after={0: 20}, stalls=0.0)
    late = [t for t in arrivals if t > 3.0]  # long after worker 0 stopped
    assert achieved(late) == pytest.approx(1 / board_interval(20.0), rel=0.02)


def test_booked_slots_are_one_interval_apart_and_an_idle_board_starts_from_now() -> None:
    interval = 0.1
    next_free, wait = book_slot(0.0, 10.0, interval)  # idle for long: now (counted a little earlier)
    assert wait == 0 and next_free == pytest.approx(10.0 + (1 - CATCH_UP) * interval)
    after, wait = book_slot(next_free, 10.01, interval)  # booked at once, sent when the slot comes
    assert after == pytest.approx(next_free + interval) and wait == pytest.approx(next_free - 10.01)
    assert book_slot(after, 10.0, interval) == (pytest.approx(after + interval), pytest.approx(after - 10.0))


def test_a_board_whose_run_ended_gives_no_more_slots() -> None:
    boards = RateBoards()
    boards.join("server-a", "run-a", 10.0, client="client-1")
    boards.join("server-b", "run-b", 10.0, client="client-2")
    assert boards.book("server-a", "run-a") == 0.0
    assert boards.book("server-a", "run-a") > 0.0  # the next one is booked, one interval on
    boards.remove_client(None, "client-1")  # the stage of run-a died
    with pytest.raises(RunEnded):
        boards.book("server-a", "run-a")
    assert boards.book("server-b", "run-b") == 0.0
    boards.leave("server-b", "run-b")
    with pytest.raises(RunEnded):
        boards.book("server-b", "run-b")
    assert not boards.boards


def test_runs_with_one_key_book_on_one_board_at_the_politest_rate() -> None:
    """Two runs (two clients) at 20/s and 10/s on one key: one sequence of slots, 10/s apart, whoever books;
    when the slower run's client goes, the board stays for the other, at its own 20/s."""
    now = {"t": 100.0}
    boards = RateBoards()
    boards.join("server", "fast", 20.0, client="client-1")
    boards.join("server", "slow", 10.0, client="client-2")
    boards.join("elsewhere", "other", 20.0, client="client-2")
    boards.boards["server"].clock = lambda: now["t"]
    waits = [boards.book("server", run) for run in ("fast", "slow", "fast", "slow")]
    assert waits == pytest.approx([0.0, *(k * board_interval(10.0) - CATCH_UP * board_interval(10.0)
                                          for k in (1, 2, 3))])
    boards.remove_client(None, "client-2")
    assert set(boards.boards) == {"server"} and set(boards.boards["server"].runs) == {"fast"}
    with pytest.raises(RunEnded):
        boards.book("server", "slow")
    now["t"] += 1.0
    assert boards.book("server", "fast") == 0.0
    assert boards.book("server", "fast") == pytest.approx((1 - CATCH_UP) * board_interval(20.0))


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
    ({"store": "https://bucket.example.com/x"}, "runtime.store cannot be 'https://bucket.example.com/x': https:// is "
                                                "read-only"),
    ({"store": "s3://"}, "runtime.store must be empty"),
    ({"dask_workers": -1}, "runtime.dask_workers must be at least 0"),
    ({"rate_key": "flickr\nteam"}, "runtime.rate_key must be at most 200 printable characters"),
    ({"rate_key": "k" * 201}, "runtime.rate_key must be at most 200 printable characters"),
])
def test_bad_engine_settings_are_one_line_naming_the_key(tmp_path: Path, runtime: dict, message: str) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"runtime": runtime}))
    with pytest.raises(UserError) as info:
        load_params(tmp_path / "params.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_engine_settings_are_runtime_only() -> None:
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    assert (params.runtime.engine, params.runtime.scheduler, params.runtime.store, params.runtime.rate_key) == (
        "local", "", "", "")
    for key in ("engine", "scheduler", "dask_workers", "store", "rate_key"):
        assert all(key not in section for section in params.tracked().values() if isinstance(section, dict))
    good = RuntimeParams(engine="dask", scheduler="tcp://10.0.0.5:8786", store="s3://bucket/prefix/")
    assert good.store == "s3://bucket/prefix" and RuntimeParams(scheduler="scheduler:8786").scheduler
