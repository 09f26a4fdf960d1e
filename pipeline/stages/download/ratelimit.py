"""One request rate for every download worker of a run, however many processes they live in.

A limiter grants a request only when the *board* says its slot has come: the board holds one number, the
earliest time the next grant may happen, and each grant moves it on by ``1/rate``. A caller whose slot
has not come sleeps until it should have, then asks again; nothing is booked ahead. So:

- grants are spaced at least ``(1 - CATCH_UP)/rate`` apart *as they actually happened*: a stalled event
  loop or a slow process start delays the queue instead of releasing missed slots together as a burst;
- every process asks the same board (:class:`SharedBoard`, one float in shared memory behind one lock; on
  a Dask cluster the scheduler's, :mod:`.cluster`), so
  there are no per-process shares to drift into step with each other or to be stranded when a process
  runs out of work early. (The earlier design split the rate into per-process lanes whose start offsets
  were fixed before the pool started; when start-up took longer than ``1/rate`` two lanes fired together
  and stayed paired.)

Why not a token bucket or ``ratelim``: a bucket hands out its saved tokens at once, so a server counting
requests in a strict 1-second window sees bursts above the limit (pyrate-limiter let 28-36 through in a
window when asked for 20/s), and ``ratelim`` 0.1.6 holds no lock at all (4.5x the limit with 8 threads).

The decision itself is :func:`take_slot`, a pure function, so tests replay it under a fake clock.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

#: A late wake-up may start the next interval this much (as a fraction of the interval) before the
#: moment it actually woke, to win back timer overshoot (~1 ms per sleep would cost 2% at 20/s).
#: Small enough that 21 consecutive gaps can never fit in one second at 20/s: 21 * 0.96 / 20 > 1.
CATCH_UP = 0.04


def take_slot(next_free: float, now: float, interval: float) -> tuple[float, float]:
    """``(next_free after this call, seconds to wait)``; a wait of 0 means the slot was taken now.

    Slots stay at least ``interval`` apart and a grant happens at most ``CATCH_UP * interval`` after its slot,
    so n + 1 grants span at least ``(n - CATCH_UP) * interval``: a 1-second window never holds more than
    ``floor(rate + CATCH_UP) + 1`` of them (rate + 1 for a whole rate).
    """
    slot = max(next_free, now - CATCH_UP * interval)
    if slot > now:
        return next_free, slot - now
    return slot + interval, 0.0


class Board(Protocol):
    """Where the next free slot is kept, for every limiter that shares a rate."""

    def take(self, interval: float) -> float:
        """Take the slot if it has come (return 0), else return how long to wait before asking again."""


@runtime_checkable
class HeldBoard(Protocol):
    """A board far away (the cluster's, :mod:`.cluster`): one call that returns when the caller's turn has
    come (it books a slot there and sleeps here), since asking again and again over the network would cost
    a round trip per question."""

    async def turn(self) -> None:
        """Return when this caller may send its request."""


class LocalBoard:
    """The board of one process (its event loops run one at a time, so no lock is needed)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock, self.next_free = clock, 0.0

    def take(self, interval: float) -> float:
        self.next_free, wait = take_slot(self.next_free, self.clock(), interval)
        return wait


class SharedBoard:
    """The board of a process pool: one double in shared memory and one lock, made before the pool starts
    and handed to each worker through the pool's initializer (the way multiprocessing shares them).

    ``time.monotonic`` is CLOCK_MONOTONIC, one clock for every process on the machine.
    """

    def __init__(self, context: multiprocessing.context.BaseContext | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        context = context or multiprocessing.get_context()
        self._next = context.RawValue("d", 0.0)
        self._lock = context.Lock()
        self.clock = clock

    def take(self, interval: float) -> float:
        with self._lock:
            self._next.value, wait = take_slot(self._next.value, self.clock(), interval)
        return wait


class RateLimiter:
    """``await limiter.wait()`` before each request; at most ``rate`` grants per second (``rate`` 0 = off).

    The callers of one process queue on an asyncio lock, so only one of them at a time asks the board.
    """

    def __init__(self, rate: float, board: Board | HeldBoard | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not rate >= 0:  # also NaN
            raise ValueError(f"rate must be a number >= 0, got {rate}")
        self.rate = rate
        self.interval = 1.0 / rate if rate else 0.0
        self.board = board or LocalBoard()
        self._held = isinstance(self.board, HeldBoard)
        self._sleep = sleep
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _loop_lock(self) -> asyncio.Lock:
        """An asyncio lock for the running loop (a lock cannot be shared between loops; shards run one each)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    async def wait(self) -> None:
        """Return when this caller may send its request."""
        if not self.rate:
            return
        async with self._loop_lock():
            if self._held:
                await self.board.turn()
                return
            while (delay := self.board.take(self.interval)) > 0:
                await self._sleep(delay)
