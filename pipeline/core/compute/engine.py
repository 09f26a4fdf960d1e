"""Where a stage's tasks run: in this process, in a pool of this machine's processes, or on a Dask cluster.

One call shape for all three: ``engine.run(task, context, jobs, on_message=..., on_result=...)`` calls
``task(context, job, emit)`` once per job, somewhere, and returns the results in job order; ``emit`` sends a
small message home, handed to ``on_message`` in this process. ``engine.rate_board(key, rate)`` hands a stage
the request-rate board its tasks share (this machine's, or the scheduler's). Engines: ``inline``, ``pool``
(a process pool whose workers die with this process), ``dask`` (a scheduler, or a LocalCluster started
here). How each passes contexts and messages, and what happens when a worker dies: docs/architecture.md.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pipeline.core.base.errors import PipelineFailure, UserError
from pipeline.core.base.redact import public_url
from pipeline.core.compute.machine import die_with_parent, usable_cores
from pipeline.core.net.rate import Board, RemoteBoard, machine_board

if TYPE_CHECKING:  # distributed costs ~1 s to import: only the dask engine imports it
    from distributed import Client

    from pipeline.core.base.params import RuntimeParams

Emit = Callable[[Any], None]
Task = Callable[[Any, Any, Emit], Any]
OnMessage = Callable[[Any], None]
OnResult = Callable[[int, Any], None]

#: how often the waiting stage looks at messages and finished jobs (seconds)
POLL = 0.1
#: a task's messages travel in batches: after this many seconds, or this many messages
BATCH_SECONDS, BATCH_SIZE = 0.25, 256


def _ignore(_: Any) -> None:
    pass


class Engine(ABC):
    """Runs ``task(context, job, emit)`` for each job and returns the results in job order."""

    kind: str
    #: how many tasks run at once (for sizing chunks)
    workers: int

    @abstractmethod
    def run(self, task: Task, context: Any, jobs: Sequence[Any], on_message: OnMessage | None = None,
            on_result: OnResult | None = None) -> list[Any]:
        """``task`` must be a module-level function (the pool and Dask pickle it by name)."""

    @contextmanager
    def rate_board(self, key: str, rate: float) -> Iterator[Board | RemoteBoard]:
        """The request-rate board (:mod:`pipeline.core.net.rate`) this engine's tasks share with every run that
        names the same ``key``, joined by this run at ``rate`` (> 0) requests/s while the block runs; it
        travels to the tasks in their ``context``. Here: this machine's board, which every process of this
        user on this machine shares (an engine whose tasks run elsewhere keeps its board elsewhere)."""
        with machine_board(key, rate) as board:
            yield board


class InlineEngine(Engine):
    """This process, one job after another: no start-up, exceptions as they are."""

    kind, workers = "inline", 1

    def run(self, task: Task, context: Any, jobs: Sequence[Any], on_message: OnMessage | None = None,
            on_result: OnResult | None = None) -> list[Any]:
        results = []
        for index, job in enumerate(jobs):
            results.append(task(context, job, on_message or _ignore))
            if on_result is not None:
                on_result(index, results[-1])
        return results


class PoolEngine(Engine):
    """This machine's processes; they die with this one (``kill -9`` included), and so do their tasks."""

    kind = "pool"

    def __init__(self, workers: int, what: str, advice: str = "") -> None:
        self.workers, self.what, self.advice = workers, what, advice

    def run(self, task: Task, context: Any, jobs: Sequence[Any], on_message: OnMessage | None = None,
            on_result: OnResult | None = None) -> list[Any]:
        import multiprocessing

        messages = multiprocessing.get_context().SimpleQueue()  # put() has written to the pipe when it returns
        inbox: queue.Queue[Any] = queue.Queue()
        reader = threading.Thread(target=_forward, args=(messages, inbox), name="pool-messages", daemon=True)
        reader.start()
        results: list[Any] = [None] * len(jobs)
        initargs = (os.getpid(), context, messages)
        try:
            with ProcessPoolExecutor(min(self.workers, len(jobs)) or 1, initializer=_init_pool,
                                     initargs=initargs) as pool:
                futures = {pool.submit(_pool_task, task, job): index for index, job in enumerate(jobs)}
                _wait_all(futures, results, inbox, on_message, on_result)
        except BrokenProcessPool:
            raise PipelineFailure(f"a {self.what} process died (out of memory?){self.advice}") from None
        finally:
            messages.put(_END)
            reader.join(timeout=10)
            _drain_batches(inbox, on_message)
        return results


_END = "__pipeline_engine_end__"
_pool_context: Any = None
_pool_messages: Any = None


def _forward(source: Any, inbox: queue.Queue[Any]) -> None:
    """Move the pool's messages into a queue the waiting loop reads without blocking."""
    try:
        while (message := source.get()) != _END:
            inbox.put(message)
    except Exception:  # noqa: BLE001 - a message cut short by a worker killed mid-write: the rest are lost,
        return          # as messages may be (the results and the journals are what count)


def _init_pool(parent: int, context: Any, messages: Any) -> None:
    global _pool_context, _pool_messages
    die_with_parent(parent)
    _pool_context, _pool_messages = context, messages


def _pool_task(task: Task, job: Any) -> Any:
    emit = _Batched(_pool_messages.put)
    try:
        return task(_pool_context, job, emit)
    finally:
        emit.flush()


def _drain(inbox: queue.Queue[Any], on_message: OnMessage | None) -> None:
    while True:
        try:
            message = inbox.get_nowait()
        except queue.Empty:
            return
        if on_message is not None:
            on_message(message)


def _wait_all(futures: dict[Future[Any], int], results: list[Any], inbox: queue.Queue[Any],
              on_message: OnMessage | None, on_result: OnResult | None) -> None:
    """Deliver messages while waiting; store each result (raising a task's exception) as it comes."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=POLL, return_when=FIRST_COMPLETED)
        _drain_batches(inbox, on_message)
        for future in sorted(done, key=futures.__getitem__):
            index = futures[future]
            results[index] = future.result()
            if on_result is not None:
                on_result(index, results[index])


class DaskEngine(Engine):
    """A Dask cluster, joined or started here (see the module docstring)."""

    kind = "dask"

    def __init__(self, client: Client, what: str, advice: str = "", on_this_machine: bool = False) -> None:
        self.client, self.what, self.advice = client, what, advice
        self.on_this_machine = on_this_machine  # a LocalCluster started here: every worker is on this machine
        self.workers = max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values()))

    def run(self, task: Task, context: Any, jobs: Sequence[Any], on_message: OnMessage | None = None,
            on_result: OnResult | None = None) -> list[Any]:
        from distributed import wait as dask_wait
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker
        from distributed.utils import CancelledError  # futures cancelled because the scheduler went away

        run_id = uuid.uuid4().hex[:12]
        topic = f"pipeline-{self.what}-{run_id}"
        inbox: queue.Queue[Any] = queue.Queue()
        self.client.subscribe_topic(topic, lambda event: inbox.put(event[1]))
        results: list[Any] = [None] * len(jobs)
        futures = {self.client.submit(_dask_task, task, context, job, topic, key=f"{self.what}-{run_id}-{i:06d}",
                                      pure=False): i for i, job in enumerate(jobs)}
        pending = set(futures)
        try:
            while pending:
                try:
                    done = dask_wait(list(pending), timeout=POLL, return_when="FIRST_COMPLETED").done
                except TimeoutError:
                    done = set()
                self._check_connected()
                _drain_batches(inbox, on_message)
                for future in sorted(done, key=futures.__getitem__):
                    pending.discard(future)
                    index = futures[future]
                    results[index] = future.result()
                    if on_result is not None:
                        on_result(index, results[index])
        except KilledWorker as exc:
            raise PipelineFailure(f"Dask workers died {_allowed_failures()} times running one {self.what} task "
                                  f"(the last: {exc.last_worker.address if exc.last_worker else 'unknown'}): "
                                  f"out of memory?{self.advice}") from None
        except (CancelledError, asyncio.CancelledError, CommClosedError) as exc:
            self._check_connected()
            raise PipelineFailure(f"the Dask run stopped: {type(exc).__name__}; run again to resume") from None
        finally:
            _drain_batches(inbox, on_message)
            if self.client.status == "running":  # else there is no scheduler left to tell
                for future in pending:
                    future.cancel()
                self.client.unsubscribe_topic(topic)
        return results

    @contextmanager
    def rate_board(self, key: str, rate: float) -> Iterator[Board | RemoteBoard]:
        """The scheduler's board for ``key`` (:mod:`pipeline.core.net.rate_cluster`), which every run on this
        scheduler shares: the workers may be on other machines, whose clocks and files are not this one's. A
        LocalCluster started by this run has its workers here and no other run on its scheduler, so it takes
        this machine's board instead, shared with the other runs of the machine."""
        if self.on_this_machine:
            with super().rate_board(key, rate) as board:
                yield board
            return
        from pipeline.core.net.rate_cluster import cluster_board  # imports distributed

        with cluster_board(self.client, key, rate) as board:
            yield board

    def _check_connected(self) -> None:
        if self.client.status not in ("running", "newly-created"):
            raise PipelineFailure(f"lost the Dask scheduler at {public_url(self.client.scheduler.address)} "
                                  f"mid-run; run again (with either engine) to resume from the journals")


def _allowed_failures() -> int:
    import dask

    return int(dask.config.get("distributed.scheduler.allowed-failures")) + 1


def _drain_batches(inbox: queue.Queue[Any], on_message: OnMessage | None) -> None:
    """:func:`_drain` for a queue of JSON batches of messages (what pool and Dask tasks send)."""
    _drain(inbox, None if on_message is None else lambda batch: [on_message(m) for m in json.loads(batch)])


class _Batched:
    """``emit`` inside a task of the pool or of Dask: messages (JSON-able) go home in batches, as JSON text
    (``send``), a few per second per worker instead of one per image, so the stage and the scheduler spend
    little on them."""

    def __init__(self, send: Callable[[str], None]) -> None:
        self.send = send
        self.batch: list[Any] = []
        self.sent = time.monotonic()

    def __call__(self, message: Any) -> None:
        self.batch.append(message)
        if len(self.batch) >= BATCH_SIZE or time.monotonic() - self.sent >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.batch:  # as JSON text: a Dask event must be msgpack scalars or str-keyed dicts of them, no lists
            self.send(json.dumps(self.batch, separators=(",", ":")))
            self.batch = []
        self.sent = time.monotonic()


def _dask_task(task: Task, context: Any, job: Any, topic: str) -> Any:
    from distributed import get_worker

    worker = get_worker()
    emit = _Batched(lambda text: worker.log_event(topic, text))
    try:
        return task(context, job, emit)
    finally:
        emit.flush()


def scheduler_address(runtime: RuntimeParams) -> str:
    """``runtime.scheduler``, else ``DASK_SCHEDULER_ADDRESS``; '' means: start a LocalCluster here."""
    return runtime.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS", "").strip()


@contextmanager
def open_engine(runtime: RuntimeParams, processes: int, what: str, advice: str = "") -> Iterator[Engine]:
    """The engine ``runtime.engine`` asks for; ``processes`` is the local engine's size (1 = inline).
    ``what`` names the work in messages; ``advice`` ends the one line said when workers die (``; try ...``)."""
    if runtime.engine == "local":
        yield InlineEngine() if processes <= 1 else PoolEngine(processes, what, advice)
        return
    with _dask_client(runtime, what) as (client, started_here):
        yield DaskEngine(client, what, advice, on_this_machine=started_here)


@contextmanager
def _dask_client(runtime: RuntimeParams, what: str) -> Iterator[tuple[Client, bool]]:
    """A client of the scheduler ``runtime`` names, or of a LocalCluster started here (then True)."""
    _quiet_dask_logs()
    from distributed import Client, LocalCluster

    address = scheduler_address(runtime)
    cluster = None
    if address:
        _probe(address, runtime.connect_timeout)
        try:
            client = Client(address, timeout=runtime.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise UserError(_unreachable(address, runtime.connect_timeout, exc)) from None
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        print(f"{what}: joined the Dask cluster at {public_url(address)} ({workers} worker(s) now)"
              f"{_dashboard(client, local=False)}", file=sys.stderr)
    else:
        n = runtime.dask_workers or usable_cores()
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=":0", silence_logs=logging.CRITICAL)  # any free port
        client = Client(cluster)
        print(f"{what}: started a Dask LocalCluster of {n} worker process(es) at {cluster.scheduler_address}"
              f"{_dashboard(client, local=True)}", file=sys.stderr)
    try:
        yield client, cluster is not None
    finally:
        _close(client, cluster)


def _close(client: Client, cluster: Any) -> None:
    """Close quietly, and quickly even when the scheduler is already gone."""
    try:
        client.close(timeout=5 if client.status == "running" else 0.5)
    except Exception:  # noqa: BLE001 - closing after a lost scheduler may fail in many ways
        pass
    if cluster is not None:
        try:
            cluster.close(timeout=10)
        except Exception:  # noqa: BLE001
            pass


def _probe(address: str, timeout: float) -> None:
    """Ask ``address`` who it is, within ``timeout``: ``distributed.Client`` waits for the handshake of a
    server that accepts the connection but never answers without any limit."""
    from distributed.comm import connect

    async def identity() -> dict[str, Any]:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    try:
        answer = asyncio.run(asyncio.wait_for(identity(), timeout))
    except Exception as exc:  # noqa: BLE001 - refused, timed out, or a server that speaks something else
        raise UserError(_unreachable(address, timeout, exc)) from None
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        raise UserError(f"runtime.scheduler: {public_url(address)} answered, but is not a Dask scheduler")


def _unreachable(address: str, timeout: float, exc: BaseException) -> str:
    why = "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
    return (f"runtime.scheduler: no Dask scheduler answered at {public_url(address)} within {timeout:g} s "
            f"(runtime.connect_timeout; {why}); start one with `dask scheduler`, or leave runtime.scheduler "
            "and DASK_SCHEDULER_ADDRESS empty for a LocalCluster")


def _dashboard(client: Client, local: bool) -> str:
    """The dashboard's address as the scheduler reports it. A LocalCluster's pages need bokeh here; whether a
    joined scheduler serves them (bokeh there, no ``--no-dashboard``) only it knows."""
    link = public_url(client.dashboard_link)
    if not local:
        return f"; dashboard (when the scheduler serves one): {link}"
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return "; no dashboard (pip install 'bokeh>=3.1' to get one)"
    return f"; dashboard: {link}"


def _quiet_dask_logs() -> None:
    """One line per problem, from us: distributed logs reconnection attempts and tracebacks on stderr, and
    its configuration gives some of its loggers levels of their own (``distributed.client: warning``)."""
    import distributed  # noqa: F401 - configures its loggers on import; then they are turned down

    for name in ["distributed", "tornado", *logging.root.manager.loggerDict]:
        if name.split(".")[0] in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
