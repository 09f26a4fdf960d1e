"""One request rate for every run on a Dask scheduler: the scheduler keeps one board per key, and every worker
of every run with that key books its slots there.

Design (docs/scale.md, "How the rate behaves"). The rule is the one of :mod:`.rate`: one "next free slot" number,
moved on by one interval per grant, slots never closer than that. What changes on a cluster is *where* that
number lives, and there must be exactly one place with one clock, because ``time.monotonic`` of two machines
are unrelated numbers:

- **On the scheduler** (chosen): a :class:`RateBoards` scheduler plugin keeps one :class:`Slots` per key (the
  image server's domain, or ``runtime.rate_key``). The scheduler is the one process a Dask run cannot lose
  (without it the run ends anyway), so the board dies with nothing that would not end the run; and it is the
  one process every run that joins the cluster talks to, so runs that do not know each other (a team's, a
  queue of ``dvc exp run``) share the rate they promised the same server. A board is kept while any run uses
  it: each run joins it (with its rate) and leaves it, and a run whose stage is gone (``kill -9``, a lost
  connection) is dropped when the scheduler sees its client go (:meth:`RateBoards.remove_client`); the other
  runs' slots are untouched. The politest (lowest) rate of the runs using a board holds for all of them.
- Not a Dask actor: an actor lives on one worker, and a worker may be killed mid-run (the run must go on).
- Not leases of the rate (each worker paced locally at rate/N, re-balanced now and then): N unrelated local
  clocks put up to N requests together in one second (rate + N), and a worker that finishes early strands
  its share until the next re-balance.

**One slot booked per worker process.** Locally a caller whose slot has not come sleeps and asks again, and
nothing is booked ahead. Across a network every question is a round trip, and a board that made callers
wait on its own timer would lose rate whenever the scheduler's busy event loop woke late (measured: 138-146/s
of 150 on a loaded 2-core machine). So :meth:`Slots.book` gives the caller the next free slot at once
(:func:`~.rate.book_slot`), as "send in ``wait`` seconds", and the worker sleeps on its own clock. The
accounting is exact (slots exactly one interval apart, whatever the timers do), and since each worker process
asks for one slot at a time (the limiter's asyncio lock) and only after using the last, at most one slot per
process is booked ahead: a process that stalls holds back one request, never a burst, and one that wakes more
than :data:`LATE_LIMIT` after its slot books a new one instead of sending late into a later second.

**Jitter between the board and the server**: the board spaces its slots with the allowance every board keeps
(:func:`~.rate.board_interval`): the server counts rate + 2 in a second only if two requests' delays between
the board and the server differ by more than :data:`~.rate.ALLOWANCE` (100 ms). Without room for them 5 ms
was enough at 150/s, and one of five 10-second runs on a loaded machine counted 152.

A worker that dies holding a slot wastes that one slot. A run that has left its board gets no more slots
(:class:`RunEnded`): its shards still running stop instead of downloading beside a re-run.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from distributed.diagnostics.plugin import SchedulerPlugin

from pipeline.core.base.errors import UserError
from pipeline.core.net.rate import board_interval, book_slot

if TYPE_CHECKING:
    from distributed import Client, Scheduler

#: a worker that wakes more than this many seconds after its slot books another instead of sending: a
#: request that late would crowd a later second (a tenth of the delays the boards' allowance absorbs)
LATE_LIMIT = 0.01
#: named apart from the first design's plugin (one board per run), so a scheduler that still has that one
#: loaded takes this one beside it instead of mixing their handlers
PLUGIN_NAME = "pipeline-rate-boards-by-key"


class RunEnded(Exception):
    """A slot asked for a run that no longer uses the board (its stage died or finished)."""


class Slots:
    """One key's board: the next free slot on the scheduler's clock, and the runs using it with their rates."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.next_free = 0.0
        self.runs: dict[str, tuple[str, float]] = {}  # run -> (its client, its rate)

    @property
    def interval(self) -> float:
        """The politest rate of the runs using the board, with the allowance."""
        return board_interval(min(rate for _, rate in self.runs.values()))

    def book(self) -> float:
        """Seconds until the caller's slot (0: send now)."""
        self.next_free, wait = book_slot(self.next_free, self.clock(), self.interval)
        return wait


class RateBoards(SchedulerPlugin):
    """The scheduler's rate boards, one per key, behind three handlers that stages and workers call."""

    name = PLUGIN_NAME
    idempotent = True  # registered by every run; a second registration must not drop the boards of the first

    def __init__(self) -> None:
        self.boards: dict[str, Slots] = {}

    async def start(self, scheduler: Scheduler) -> None:
        scheduler.handlers.update({"pipeline_rate_join": self.join, "pipeline_rate_book": self.book,
                                   "pipeline_rate_leave": self.leave})

    def join(self, key: str, run: str, rate: float, client: str) -> None:
        self.boards.setdefault(key, Slots()).runs[run] = (client, rate)

    def book(self, key: str, run: str) -> float:
        slots = self.boards.get(key)
        if slots is None or run not in slots.runs:
            raise RunEnded(f"run {run} no longer uses the rate board {key!r}: it has ended")
        return slots.book()

    def leave(self, key: str, run: str) -> None:
        slots = self.boards.get(key)
        if slots is not None:
            slots.runs.pop(run, None)
            if not slots.runs:
                del self.boards[key]

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """A run whose stage is gone (``kill -9``, a lost connection) leaves every board it used: its shards
        still running on workers get no more slots, so they stop instead of downloading beside the re-run."""
        for key, slots in list(self.boards.items()):
            for run in [run for run, (owner, _) in slots.runs.items() if owner == client]:
                self.leave(key, run)


class ClusterBoard:
    """A worker's handle on a key's board for one run (a :class:`~.rate.HeldBoard`): two names, so it pickles."""

    def __init__(self, key: str, run: str) -> None:
        self.key, self.run = key, run

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
        call = worker.scheduler.pipeline_rate_book(key=self.key, run=self.run)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, worker.loop.asyncio_loop))


@contextmanager
def cluster_board(client: Client, key: str, rate: float) -> Iterator[ClusterBoard]:
    """The board for ``key`` on ``client``'s scheduler, used by this run at ``rate`` requests/s while the block
    runs (shared with every other run there with the same key)."""
    try:
        client.register_plugin(RateBoards())
    except Exception as exc:  # noqa: BLE001 - raised on the scheduler: most often the project is not installed there
        raise UserError(f"the Dask scheduler cannot load the cluster's rate board ({type(exc).__name__}: "
                        f"{str(exc)[:120]}): install this project where the scheduler runs too (docs/scale.md)") from None
    run = uuid.uuid4().hex
    client.sync(client.scheduler.pipeline_rate_join, key=key, run=run, rate=rate, client=client.id)
    try:
        yield ClusterBoard(key, run)
    finally:
        if client.status == "running":  # else the scheduler, and the board with it, is gone
            client.sync(client.scheduler.pipeline_rate_leave, key=key, run=run)
