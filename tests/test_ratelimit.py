"""One request rate for every download worker, process and run that shares a board, shown without the wall clock.

The slot rule (:func:`take_slot`) is replayed under a fake clock: two or more processes that start at random
moments, wake late from their sleeps and stall now and then, 100 seeded runs each, with the requests reaching
the server a little after their grants (now and then much later, as on a loaded machine). A checker that finds
no fault in a faulty design proves nothing, so the old design (a fixed share per process, offsets set before
the pool started) and the board without its allowance are replayed too and must be caught. The machine's board
(a file under ``flock``) is shown with real processes and a frozen shared clock: runs with one key share it,
the politest rate holds, and a run killed anywhere leaves nothing stuck. Measured rates at a real server are
``tests/test_shared_rate.py`` (generous bounds) and ``bench/rate_bench.py`` (the numbers, BENCHMARKS.md).
"""
from __future__ import annotations

import asyncio
import heapq
import multiprocessing
import os
import pickle
import random
import signal
import struct
import threading
from pathlib import Path

import pytest
from rate_children import FrozenClock, StuckClock, ask, take_in_the_lock, use_board

from pipeline.core.net.rate import (
    ALLOWANCE,
    CATCH_UP,
    RECHECK,
    LocalBoard,
    MachineBoard,
    board_folder,
    board_interval,
    machine_board,
    take_slot,
)
from pipeline.mirror.log import max_in_window
from pipeline.stages.download.ratelimit import RateLimiter, rate_key, site


def pool_start(rng: random.Random, processes: int) -> list[float]:
    """When the processes of a pool begin work: after a common start-up, a few milliseconds apart."""
    common = rng.uniform(0.1, 0.5)
    return [common + rng.uniform(0.0, 0.005) for _ in range(processes)]


def simulate_shared(rate: float, processes: int, seed: int, seconds: float = 10.0,
                    interval: float | None = None) -> list[float]:
    """Grant times when ``processes`` processes with more work than the rate ask one shared board (whose slots
    are ``interval`` apart: the board's, allowance included, unless told otherwise).

    The processes start together after a pool's start-up (0.1-0.5 s, a few ms apart), sleep exactly as the
    limiter tells them but wake up to 2 ms late, and one time in 200 stall for up to 0.3 s (GC, a busy core)
    between waking and asking. After a grant the next caller of that process asks within a millisecond.
    """
    rng = random.Random(seed)
    interval, next_free = interval or board_interval(rate), 0.0
    queue = [(start, p) for p, start in enumerate(pool_start(rng, processes))]
    heapq.heapify(queue)
    grants: list[float] = []
    while queue:
        now, p = heapq.heappop(queue)
        if now > seconds:
            continue
        next_free, wait = take_slot(next_free, now, interval)
        if wait == 0:
            grants.append(now)
            delay = rng.uniform(0.0, 0.001)
        else:
            delay = wait + rng.uniform(0.0, 0.002)
        if rng.random() < 0.005:
            delay += rng.uniform(0.0, 0.3)
        heapq.heappush(queue, (now + delay, p))
    return grants


def simulate_fixed_shares(rate: float, processes: int, seed: int, seconds: float = 10.0) -> list[float]:
    """The old design: process k gets ``rate / n``, its first slot ``k / rate`` after a start time taken
    *before* the pool started; a process that starts late fires its missed slots' catch-up together with
    the others and stays in step with them."""
    rng = random.Random(seed)
    share = 1.0 / (rate / processes)
    grants = []
    for k, start in enumerate(pool_start(rng, processes)):
        next_free, now = k / rate, start  # the offset was fixed at 0, before a start-up longer than 1/rate
        while now <= seconds:
            next_free, wait = take_slot(next_free, now, share)
            if wait == 0:
                grants.append(now)
                now += rng.uniform(0.0, 0.001)
            else:
                now += wait + rng.uniform(0.0, 0.002)
    return grants


def at_the_server(grants: list[float], seed: int, late_share: float = 0.02, late_by: float = 0.09) -> list[float]:
    """When the granted requests reach the server: 0.1-1 ms after their grants, and a ``late_share`` of them
    up to ``late_by`` later still (a process descheduled between its grant and its send on a loaded machine;
    bench/rate_bench.py measured up to 64 ms)."""
    rng = random.Random(seed + 10_000)
    return sorted(t + rng.uniform(0.0001, 0.001) + (rng.uniform(0.0, late_by) if rng.random() < late_share else 0.0)
                  for t in grants)


@pytest.mark.parametrize("processes", [2, 4])
@pytest.mark.parametrize("rate", [5.0, 20.0])
def test_processes_sharing_a_board_never_exceed_the_rate_in_100_seeded_runs(processes: int, rate: float) -> None:
    """Requests delayed on their way by up to 90 ms more than each other (under the 100 ms allowance): never
    rate + 2 in a second at the server, and the board's rate is reached."""
    for seed in range(100):
        grants = simulate_shared(rate, processes, seed)
        assert max_in_window(at_the_server(grants, seed)) <= rate + 1, f"seed {seed}"
        gaps = [b - a for a, b in zip(sorted(grants), sorted(grants)[1:])]
        assert min(gaps) >= (1 - CATCH_UP) * board_interval(rate) - 1e-9, f"seed {seed}"
        span = max(grants) - min(grants)
        assert (len(grants) - 1) / span >= 0.95 / board_interval(rate), f"seed {seed}: the shared board lost slots"


def test_without_the_allowance_requests_delayed_on_their_way_make_rate_plus_two() -> None:
    """The check above can fail: the same board spacing its slots exactly 1/rate, the same delays."""
    rate = 20.0
    caught = [seed for seed in range(100)
              if max_in_window(at_the_server(simulate_shared(rate, 2, seed, interval=1.0 / rate), seed)) > rate + 1]
    assert len(caught) >= 10  # 52 of these 100 seeds


def test_the_allowance_costs_nothing_at_low_rates_and_under_a_tenth_at_high_ones() -> None:
    assert [board_interval(rate) for rate in (1.0, 5.0, 9.0)] == [1.0, 0.2, pytest.approx(1 / 9)]
    for rate in (20.0, 150.0, 1000.0):
        assert 0.9 * rate < 1 / board_interval(rate) < rate
        limit = rate + 1  # rate + 2 requests need this many gaps to fit in a second
        assert (limit - CATCH_UP) * board_interval(rate) == pytest.approx(1 + ALLOWANCE)


def test_the_window_check_catches_the_old_fixed_shares() -> None:
    # with start-ups longer than 1/rate, fixed shares pair up and put more than rate + 1 in some second
    caught = [seed for seed in range(100) if max_in_window(simulate_fixed_shares(20.0, 2, seed)) > 21]
    assert len(caught) >= 50


def test_take_slot_grants_only_when_the_slot_has_come() -> None:
    interval = 0.05
    next_free, wait = take_slot(0.0, 10.0, interval)  # idle for long: granted at once
    assert wait == 0 and next_free == pytest.approx(10.0 + (1 - CATCH_UP) * interval)
    assert take_slot(next_free, 10.01, interval) == (next_free, pytest.approx(next_free - 10.01))
    late = next_free + 0.2  # woke late: granted, and the next slot starts from now, not from the missed ones
    after, wait = take_slot(next_free, late, interval)
    assert wait == 0 and after == pytest.approx(late + (1 - CATCH_UP) * interval)


class FakeTime:
    """A clock that moves only when a coroutine sleeps: sleeping advances it by exactly the delay."""

    def __init__(self) -> None:
        self.now, self.sleeps = 100.0, []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


async def _grant_times(limiter: RateLimiter, time: FakeTime, callers: int) -> list[float]:
    times: list[float] = []

    async def caller() -> None:
        await limiter.wait()
        times.append(time.now)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return times


def test_the_limiter_spaces_concurrent_callers_under_a_fake_clock() -> None:
    time = FakeTime()
    limiter = RateLimiter(20.0, LocalBoard(20.0, time.clock), sleep=time.sleep)
    grants = asyncio.run(_grant_times(limiter, time, 30))
    assert len(grants) == 30
    gaps = [b - a for a, b in zip(grants, grants[1:])]
    # the first grant after idling is back-dated by the catch-up allowance; every later one is one interval
    # apart (the board's: 1/rate, widened for the delays to the server)
    interval = board_interval(20.0)
    assert gaps[0] == pytest.approx((1 - CATCH_UP) * interval)
    assert gaps[1:] == pytest.approx([interval] * (len(gaps) - 1))


def test_spacing_holds_across_event_loops() -> None:
    """Shards run one event loop each and share a limiter: no burst at the boundary."""
    time = FakeTime()
    limiter = RateLimiter(10.0, LocalBoard(10.0, time.clock), sleep=time.sleep)
    first = asyncio.run(_grant_times(limiter, time, 5))
    second = asyncio.run(_grant_times(limiter, time, 5))
    assert second[0] - first[-1] == pytest.approx(board_interval(10.0))


def test_rate_zero_never_waits() -> None:
    time = FakeTime()
    limiter = RateLimiter(0.0, sleep=time.sleep)
    asyncio.run(_grant_times(limiter, time, 50))
    assert time.sleeps == []


@pytest.mark.parametrize("rate", [-1.0, float("nan")])
def test_a_negative_or_nan_rate_is_refused(rate: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate)


def ask_together(boards: list[MachineBoard], context: multiprocessing.context.BaseContext) -> list[float]:
    """Each board asked once by a process of its own, all at once; their answers, sorted."""
    answers = context.Queue()
    workers = [context.Process(target=ask, args=(board, answers)) for board in boards]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return sorted(answers.get(timeout=10) for _ in boards)


@pytest.fixture(scope="module")
def spawn() -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context("spawn")


def test_processes_of_runs_with_one_key_share_the_machine_board(tmp_path: Path, spawn) -> None:
    """With time frozen, of two processes of two runs asking for the same slot exactly one gets it, and after
    one interval exactly one gets the next: the slot lives in the machine's board, not in a run. A run with
    another key has a board of its own."""
    clock = FrozenClock(spawn)
    with machine_board("server-a", 20.0, tmp_path) as one, machine_board("server-a", 20.0, tmp_path) as other, \
            machine_board("server-b", 20.0, tmp_path) as elsewhere:
        assert one.folder == other.folder != elsewhere.folder
        boards = [MachineBoard(b.folder, 20.0, clock) for b in (one, other)]
        for _ in range(3):
            waits = ask_together(boards, spawn)
            assert waits[0] == 0 and waits[1] > 0
            clock.value.value += board_interval(20.0)
        assert MachineBoard(elsewhere.folder, 20.0, clock).take() == 0


def test_the_politest_rate_of_the_runs_using_a_board_holds(tmp_path: Path, spawn) -> None:
    clock = FrozenClock(spawn)
    with machine_board("server", 20.0, tmp_path) as fast:
        board = MachineBoard(fast.folder, 20.0, clock)
        with machine_board("server", 5.0, tmp_path):
            assert board.take() == 0
            assert board.take() == pytest.approx((1 - CATCH_UP) * board_interval(5.0))  # the slower run's pace
        clock.value.value += board_interval(5.0)  # the slow run has left: the fast one's own rate again
        assert board.take() == 0
        assert board.take() == pytest.approx((1 - CATCH_UP) * board_interval(20.0))


def test_a_run_killed_anywhere_leaves_the_machine_board_neither_stuck_nor_slow(tmp_path: Path, spawn) -> None:
    """A run killed while it uses the board (its rate 1/s) stops counting once the board looks again; a
    process killed inside the board's lock leaves it free (the kernel drops a dead process's ``flock``)."""
    clock = FrozenClock(spawn)
    joined, asked = spawn.Event(), spawn.Event()
    slow = spawn.Process(target=use_board, args=("server", 1.0, str(tmp_path), joined))
    with machine_board("server", 20.0, tmp_path) as run:
        board = MachineBoard(run.folder, 20.0, clock)
        slow.start()
        try:
            assert joined.wait(60)
            assert board.take() == 0
            assert board.take() == pytest.approx((1 - CATCH_UP) * board_interval(1.0))
        finally:
            os.kill(slow.pid, signal.SIGKILL)
            slow.join(timeout=60)
        clock.value.value += RECHECK + board_interval(1.0)
        assert board.take() == 0
        assert board.take() == pytest.approx((1 - CATCH_UP) * board_interval(20.0))
        assert [p.name for p in Path(run.folder, "runs").iterdir()] == [next(Path(run.folder, "runs").iterdir()).name]

        holder = spawn.Process(target=take_in_the_lock, args=(MachineBoard(run.folder, 20.0, StuckClock(asked)),))
        holder.start()
        try:
            assert asked.wait(60), "the process never got into the board's lock"
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.join(timeout=60)
        clock.value.value += 1.0
        taker = threading.Thread(target=board.take, daemon=True)
        taker.start()
        taker.join(timeout=30)
        assert not taker.is_alive(), "the board stayed locked by a dead process"


def test_a_board_written_on_another_clock_starts_afresh(tmp_path: Path) -> None:
    """A board file from before a reboot (or another machine) holds a slot far ahead of this clock: ignored."""
    folder = board_folder("server", tmp_path)
    (folder / "board").write_bytes(struct.pack("<4d", 5e6, 0.05, 0.05, 5e6))
    with machine_board("server", 20.0, tmp_path) as board:
        assert MachineBoard(board.folder, 20.0, lambda: 1000.0).take() == 0


def test_a_board_handle_pickles_without_its_file(tmp_path: Path) -> None:
    with machine_board("server", 20.0, tmp_path) as board:
        board.take()
        copy = pickle.loads(pickle.dumps(board))
        assert copy.folder == board.folder and copy.interval == board.interval and copy._fd is None


# ---------------------------------------------------------------------------------------------------------
# Which board a run books on


@pytest.mark.parametrize("url, expected", [
    ("https://farm3.staticflickr.com/1/2_3_o.jpg", "staticflickr.com"),
    ("https://c1.staticflickr.com/1/2_3_o.jpg", "staticflickr.com"),
    ("https://user:secret@Open-Images-Dataset.s3.amazonaws.com/train/x.jpg", "s3.amazonaws.com"),
    ("http://127.0.0.1:8754/flickr/1_2_o.jpg", "127.0.0.1:8754"),
    ("http://localhost:9000/x.jpg", "localhost:9000"),
    ("http://[::1]:8000/x.jpg", "::1:8000"),
    ("https://example.com/x.jpg", "example.com"),
])
def test_the_site_of_a_url_names_its_server(url: str, expected: str) -> None:
    assert site(url) == expected


def test_a_run_books_on_the_board_of_its_server_unless_named() -> None:
    urls = ["https://farm1.staticflickr.com/a.jpg", "ftp://x/y", "https://c2.staticflickr.com/b.jpg",
            "http://127.0.0.1:1/c.jpg"]
    assert rate_key("", urls) == "staticflickr.com"
    assert rate_key("team-flickr", urls) == "team-flickr"
    assert rate_key("", ["", "ftp://x/y"]) == "no-server"
