"""One request rate for a whole Dask cluster: one board on the scheduler hands every worker its next slot.

Design (docs/scale.md, "How the rate behaves"). The rule is the one of :mod:`.ratelimit`: one "next free slot"
number, moved on by ``1/rate`` per grant, slots never closer than one interval. What changes on a cluster is
*where* that number lives, and there must be exactly one place with one clock, because ``time.monotonic`` of
two machines are unrelated numbers:

- **On the scheduler** (chosen): a :class:`RateBoards` scheduler plugin keeps one :class:`Slots` per run. The
  scheduler is the one process a Dask run cannot lose (without it the run ends anyway), so the board dies
  with nothing that would not end the run.
- Not a Dask actor: an actor lives on one worker, and a worker may be killed mid-run (the run must go on).
- Not leases of the rate (each worker paced locally at rate/N, re-balanced now and then): N unrelated local
  clocks put up to N requests together in one second (rate + N), and a worker that finishes early strands
  its share until the next re-balance.

**One slot booked per worker process.** Locally a caller whose slot has not come sleeps and asks again, and
nothing is booked ahead. Across a network every question is a round trip, and a board that made callers
wait on its own timer would lose rate whenever the scheduler's busy event loop woke late (measured: 138-146/s
of 150 on a loaded 2-core machine). So :meth:`Slots.book` gives the caller the next free slot at once, as
"send in ``wait`` seconds", and the worker sleeps on its own clock. The accounting is exact (slots exactly
one interval apart, whatever the timers do), and since each worker process asks for one slot at a time
(the limiter's asyncio lock) and only after using the last, at most one slot per process is booked ahead: a
process that stalls holds back one request, never a burst, and one that wakes more than :data:`LATE_LIMIT`
after its slot books a new one instead of sending late into a later second. A board left idle starts again
from "now", so unused time is never banked (the local rule's catch-up, :data:`~.ratelimit.CATCH_UP`).

**Jitter between the board and the server.** A request leaves its worker after a reply over the network, a
wake-up from a sleep and the send, each delayed now and then by a busy CPU, and on several machines at
different distances from the server. The board therefore books at 98% of the rate (:data:`CLUSTER_MARGIN`):
152 requests then span at least ``(151 - 0.04) / 147`` s at 150/s, so the server counts rate + 2 in a second
only if their delays differ by more than 27 ms (1 s at 1/s). Without the margin 5 ms was enough, and one of
five 10-second runs on a loaded machine counted 152.

A worker that dies holding a slot wastes that one slot. A stage that dies closes its board when the
scheduler sees its client go (:meth:`RateBoards.remove_client`): its shards still running get no more slots.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from distributed.diagnostics.plugin import SchedulerPlugin

from pipeline.core.errors import UserError
from pipeline.stages.download.ratelimit import CATCH_UP

if TYPE_CHECKING:
    from distributed import Client, Scheduler

#: the board books ``(1 - CLUSTER_MARGIN) * rate`` slots a second: room for the delays between it and the server
CLUSTER_MARGIN = 0.02
#: a worker that wakes more than this many seconds after its slot books another instead of sending: a
#: request that late would crowd a later second (half the ~20 ms the margin allows at any rate)
LATE_LIMIT = 0.01
PLUGIN_NAME = "pipeline-rate-boards"


class RunEnded(Exception):
    """A slot asked of a board whose run is over (its stage died or finished)."""


def book_slot(next_free: float, now: float, interval: float, catch_up: float = CATCH_UP) -> tuple[float, float]:
    """``(next_free after this booking, seconds until the booked slot)``: always books, unlike
    :func:`~.ratelimit.take_slot`. Slots are at least ``interval`` apart; an idle board's next slot is "now"
    (counted as up to ``catch_up`` of an interval ago, to win back timer overshoot, never more)."""
    slot = max(next_free, now - catch_up * interval)
    return slot + interval, max(0.0, slot - now)


class Slots:
    """One run's board: the next free slot on this process's clock."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self.next_free = 0.0

    def book(self) -> float:
        """Seconds until the caller's slot (0: send now)."""
        self.next_free, wait = book_slot(self.next_free, self.clock(), self.interval)
        return wait


class RateBoards(SchedulerPlugin):
    """The scheduler's rate boards, one per run, behind three handlers that workers and stages call."""

    name = PLUGIN_NAME
    idempotent = True  # registered by every run; a second registration must not drop the boards of the first

    def __init__(self) -> None:
        self.boards: dict[str, Slots] = {}
        self.owners: dict[str, str] = {}  # board -> the client whose run it is

    async def start(self, scheduler: Scheduler) -> None:
        scheduler.handlers.update({"pipeline_rate_open": self.open, "pipeline_rate_slot": self.slot,
                                   "pipeline_rate_close": self.close})

    def open(self, board: str, rate: float, client: str) -> None:
        self.boards[board] = Slots(1.0 / (rate * (1 - CLUSTER_MARGIN)))
        self.owners[board] = client

    def slot(self, board: str) -> float:
        slots = self.boards.get(board)
        if slots is None:
            raise RunEnded(f"no rate board {board!r}: its run has ended")
        return slots.book()

    def close(self, board: str) -> None:
        self.owners.pop(board, None)
        self.boards.pop(board, None)

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """A run whose stage died (``kill -9``, a lost connection) closes its board: shards still running for
        it on workers get no more slots, so they stop instead of downloading beside the re-run."""
        for board in [b for b, owner in self.owners.items() if owner == client]:
            self.close(board)


class ClusterBoard:
    """A worker's handle on its run's board (a :class:`~.ratelimit.HeldBoard`): only a name, so it pickles."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def turn(self) -> None:
        """Book a slot and sleep until it; woken more than :data:`LATE_LIMIT` late (a stalled process), book
        again rather than send late."""
        loop = asyncio.get_running_loop()
        while (wait := await self._book()) > 0:
            due = loop.time() + wait
            await asyncio.sleep(wait)
            if loop.time() - due <= LATE_LIMIT:
                return

    async def _book(self) -> float:
        """One request to the scheduler over the worker's own connection (made on the worker's event loop:
        the shard's is another one)."""
        from distributed import get_worker

        worker = get_worker()
        call = worker.scheduler.pipeline_rate_slot(board=self.name)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, worker.loop.asyncio_loop))


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
