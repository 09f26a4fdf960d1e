"""One request rate for all download workers and processes, shown without the wall clock.

The limiter's decision (:func:`take_slot`) is replayed under a fake clock: two or more processes that start
at random moments, wake late from their sleeps and stall now and then, 100 seeded runs each. A checker that
finds no fault in a faulty design proves nothing, so the old design (a fixed share per process, offsets set
before the pool started) is replayed too and must be caught. What real processes add is only that they
share one board; that is shown with a frozen shared clock. Measured rates at a real server are a benchmark
(``bench/rate_bench.py``, BENCHMARKS.md), not a test: they depend on how busy the machine is.
"""
from __future__ import annotations

import asyncio
import heapq
import multiprocessing
import random

import pytest

from pipeline.stages.download.ratelimit import CATCH_UP, LocalBoard, RateLimiter, SharedBoard, take_slot
from pipeline.mirror.log import max_in_window


def pool_start(rng: random.Random, processes: int) -> list[float]:
    """When the processes of a pool begin work: after a common start-up, a few milliseconds apart."""
    common = rng.uniform(0.1, 0.5)
    return [common + rng.uniform(0.0, 0.005) for _ in range(processes)]


def simulate_shared(rate: float, processes: int, seed: int, seconds: float = 10.0) -> list[float]:
    """Grant times when ``processes`` processes with more work than the rate ask one shared board.

    The processes start together after a pool's start-up (0.1-0.5 s, a few ms apart), sleep exactly as the
    limiter tells them but wake up to 2 ms late, and one time in 200 stall for up to 0.3 s (GC, a busy core)
    between waking and asking. After a grant the next caller of that process asks within a millisecond.
    """
    rng = random.Random(seed)
    interval, next_free = 1.0 / rate, 0.0
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


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_sharing_a_board_never_exceed_the_rate_in_100_seeded_runs(processes: int) -> None:
    rate = 20.0
    for seed in range(100):
        grants = simulate_shared(rate, processes, seed)
        assert max_in_window(grants) <= rate + 1, f"seed {seed}"
        gaps = [b - a for a, b in zip(sorted(grants), sorted(grants)[1:])]
        assert min(gaps) >= (1 - CATCH_UP) / rate - 1e-9, f"seed {seed}"
        span = max(grants) - min(grants)
        assert (len(grants) - 1) / span >= 0.95 * rate, f"seed {seed}: the shared board lost slots"


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
    limiter = RateLimiter(20.0, LocalBoard(time.clock), sleep=time.sleep)
    grants = asyncio.run(_grant_times(limiter, time, 30))
    assert len(grants) == 30
    gaps = [b - a for a, b in zip(grants, grants[1:])]
    # the first grant after idling is back-dated by the catch-up allowance; every later one is 1/rate apart
    assert gaps[0] == pytest.approx((1 - CATCH_UP) * 0.05)
    assert gaps[1:] == pytest.approx([0.05] * (len(gaps) - 1))


def test_spacing_holds_across_event_loops() -> None:
    """Shards run one event loop each and share a limiter: no burst at the boundary."""
    time = FakeTime()
    limiter = RateLimiter(10.0, LocalBoard(time.clock), sleep=time.sleep)
    first = asyncio.run(_grant_times(limiter, time, 5))
    second = asyncio.run(_grant_times(limiter, time, 5))
    assert second[0] - first[-1] == pytest.approx(0.1)


def test_rate_zero_never_waits() -> None:
    time = FakeTime()
    limiter = RateLimiter(0.0, LocalBoard(time.clock), sleep=time.sleep)
    asyncio.run(_grant_times(limiter, time, 50))
    assert time.sleeps == []


@pytest.mark.parametrize("rate", [-1.0, float("nan")])
def test_a_negative_or_nan_rate_is_refused(rate: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate)


class FrozenClock:
    """A clock shared by processes, moved only by the test."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self.value = context.RawValue("d", 1000.0)

    def __call__(self) -> float:
        return self.value.value


def _ask(board: SharedBoard, interval: float, answers: multiprocessing.Queue) -> None:
    answers.put(board.take(interval))


def test_processes_share_one_board() -> None:
    """With time frozen, of two processes asking for the same slot exactly one gets it, and after one
    interval exactly one gets the next: the slot lives in shared memory, not in each process."""
    context = multiprocessing.get_context("spawn")
    clock = FrozenClock(context)
    board = SharedBoard(context, clock=clock)
    answers = context.Queue()
    for _ in range(3):
        workers = [context.Process(target=_ask, args=(board, 0.05, answers)) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        waits = sorted(answers.get(timeout=10) for _ in range(2))
        assert waits[0] == 0 and waits[1] > 0
        clock.value.value += 0.05
