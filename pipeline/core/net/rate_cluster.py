"""One request rate for every run on a Dask scheduler: the scheduler keeps one board per key, and every worker
of every run with that key books its slots there.

The rule is :mod:`.rate`'s; the board lives on the scheduler (:class:`RateBoards`, a scheduler plugin with one
:class:`Slots` per key), the one process a run cannot lose and every run talks to. :meth:`Slots.book` gives
a worker its next slot at once and the worker sleeps on its own clock: at most one slot per process booked
ahead. A run that left its board gets no more slots (:class:`RunEnded`). Why there and not elsewhere, and
what was measured: docs/architecture.md ("Design notes of the core") and docs/scale.md.
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
    """A worker's handle on a key's board for one run (a :class:`~.rate.RemoteBoard`): two names, so it pickles."""

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
