"""One request rate for a whole Dask cluster: the board lives on the scheduler, every worker waits its turn there.

Design (docs/scale.md, "How the rate behaves"). The limiter's rule is the one of :mod:`.ratelimit`
(:func:`~.ratelimit.take_slot`: one "next free slot" number, moved on by ``1/rate`` per grant, nothing booked
ahead). What changes on a cluster is *where* that number lives, and there must be exactly one place with one
clock, because ``time.monotonic`` of two machines are unrelated numbers:

- **On the scheduler** (chosen): a :class:`RateBoards` scheduler plugin keeps one :class:`Pacer` per run. A
  worker's limiter sends one request, ``pipeline_rate_turn``, and the answer comes when its turn has come:
  one round trip per grant, however many workers wait. The scheduler is already the one process a Dask run
  cannot lose (without it the run ends anyway), so the board dies with nothing that would not end the run.
- Not a Dask actor: an actor lives on one worker, and a worker may be killed mid-run (the run must go on).
- Not leases of the rate (each worker paced locally at rate/N, re-balanced now and then): N unrelated local
  clocks put up to N requests together in one second (rate + N), and a worker that finishes early strands
  its share until the next re-balance.

Waiters queue first come, first served, and one pacer task per board wakes once per grant (not once per
waiter). The pacer runs on the scheduler's event loop, which also runs the cluster, so it wakes later than
a quiet process does; it therefore allows a grant up to :data:`CLUSTER_CATCH_UP` of an interval after its
slot without pushing the next one back (0.04 locally). By :func:`~.ratelimit.take_slot`'s rule any catch-up
under 1 keeps every 1-second window at ``floor(rate + catch-up) + 1`` grants; at 150/s a late wake-up of up
to 1.7 ms then costs no rate, where 0.04 lost 7% on a loaded scheduler.

Every worker process asks one request at a time (the limiter's asyncio lock), so the scheduler holds at
most one waiter per worker process. A worker that dies while waiting leaves a cancelled or unanswered
waiter: cancelled ones are skipped, an unanswered one costs one slot.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from distributed.diagnostics.plugin import SchedulerPlugin

from pipeline.core.errors import UserError
from pipeline.stages.download.ratelimit import take_slot

if TYPE_CHECKING:
    from distributed import Client, Scheduler

#: how late after its slot a grant may be without pushing the next one back, as a fraction of the interval
CLUSTER_CATCH_UP = 0.25
PLUGIN_NAME = "pipeline-rate-boards"


class RunEnded(Exception):
    """A turn asked of a board whose run is over (its stage died or finished)."""


class Pacer:
    """Turns, one per ``interval``, to callers in the order they asked (``await pacer.turn()``)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, catch_up: float = CLUSTER_CATCH_UP) -> None:
        self.interval, self.clock, self.sleep, self.catch_up = interval, clock, sleep, catch_up
        self.next_free = 0.0
        self.waiting: deque[asyncio.Future[None]] = deque()
        self._pacing: asyncio.Task[None] | None = None

    async def turn(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        if self._pacing is None or self._pacing.done():
            self._pacing = asyncio.create_task(self._pace())
        await future

    async def _pace(self) -> None:
        while True:
            while self.waiting and self.waiting[0].done():  # its caller went away (a killed worker)
                self.waiting.popleft()
            if not self.waiting:
                return
            self.next_free, wait = take_slot(self.next_free, self.clock(), self.interval, self.catch_up)
            if wait > 0:
                await self.sleep(wait)
            else:
                self.waiting.popleft().set_result(None)

    def close(self) -> None:
        """No more turns: callers still waiting are told the run has ended."""
        if self._pacing is not None:
            self._pacing.cancel()
        for future in self.waiting:
            if not future.done():
                future.set_exception(RunEnded("the run this rate board served has ended"))
        self.waiting.clear()


class RateBoards(SchedulerPlugin):
    """The scheduler's rate boards, one :class:`Pacer` per run, behind three handlers workers and clients call."""

    name = PLUGIN_NAME
    idempotent = True  # registered by every run; a second registration must not drop the boards of the first

    def __init__(self) -> None:
        self.boards: dict[str, Pacer] = {}
        self.owners: dict[str, str] = {}  # board -> the client whose run it is

    async def start(self, scheduler: Scheduler) -> None:
        scheduler.handlers.update({"pipeline_rate_open": self.open, "pipeline_rate_turn": self.turn,
                                   "pipeline_rate_close": self.close})

    def open(self, board: str, rate: float, client: str) -> None:
        self.boards[board] = Pacer(1.0 / rate)
        self.owners[board] = client

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """A run whose stage died (``kill -9``, a lost connection) closes its board: shards still running for
        it on workers get no more turns, so they stop instead of downloading beside the re-run."""
        for board in [b for b, owner in self.owners.items() if owner == client]:
            self.close(board)

    async def turn(self, board: str) -> None:
        pacer = self.boards.get(board)
        if pacer is None:
            raise RunEnded(f"no rate board {board!r}: its run has ended")
        await pacer.turn()

    def close(self, board: str) -> None:
        self.owners.pop(board, None)
        pacer = self.boards.pop(board, None)
        if pacer is not None:
            pacer.close()


class ClusterBoard:
    """A worker's handle on its run's board (a :class:`~.ratelimit.HeldBoard`): only a name, so it pickles."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def turn(self) -> None:
        """One request to the scheduler over the worker's own connection, answered when the turn has come.

        The shard's event loop is not the worker's, so the call is made on the worker's loop and awaited here.
        """
        from distributed import get_worker

        worker = get_worker()
        call = worker.scheduler.pipeline_rate_turn(board=self.name)
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, worker.loop.asyncio_loop))


@contextmanager
def cluster_board(client: Client, rate: float) -> Iterator[ClusterBoard]:
    """A board for one run at ``rate`` requests/s on ``client``'s scheduler, removed when the run ends."""
    try:
        client.register_plugin(RateBoards())
    except Exception as exc:  # noqa: BLE001 - raised on the scheduler: most often the project is not installed there
        raise UserError(f"the Dask scheduler cannot load the cluster's rate board ({type(exc).__name__}: "
                        f"{str(exc)[:120]}): install this project where the scheduler runs too (docs/scale.md)") from None
    name = uuid.uuid4().hex
    client.sync(client.scheduler.pipeline_rate_open, board=name, rate=rate, client=client.id)
    try:
        yield ClusterBoard(name)
    finally:
        if client.status == "running":  # else the scheduler, and the board with it, is gone
            client.sync(client.scheduler.pipeline_rate_close, board=name)
