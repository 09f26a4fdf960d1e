"""One request rate for every run that shares a server: the slot rule, the allowance, and the boards of one process
and of one machine (the board of a Dask scheduler is :mod:`pipeline.core.net.rate_cluster`).

**The rule.** A *board* holds one number, the earliest time the next request may go (the next free slot); each
grant moves it on by one interval. A caller whose slot has not come sleeps until it should have and asks again;
nothing is booked ahead (:func:`take_slot`, a pure function, so tests replay it under a fake clock). Grants are
therefore spaced as they actually happened: a stalled process delays the queue instead of releasing the missed
slots together as a burst. A token bucket would hand out its saved tokens at once (pyrate-limiter let 28-36 a
second through when asked for 20/s); ``ratelim`` 0.1.6 holds no lock at all (4.5x the limit with 8 threads).

**Who shares a board.** ``download.rate`` is a promise to the image server, so every run that downloads from
that server shares one board, not only the processes of one run: runs name their board by a key (the server's
domain, or ``runtime.rate_key``), and every run of this user on this machine that asks for the same key books
on the same :class:`MachineBoard` (a Dask scheduler keeps one per key for the runs that join it). When runs ask
different rates for one key, the politest (lowest) rate of the runs still open holds for all of them: a run
that asked for less must get no more than it asked for, wherever the others' requests come from.

**The allowance.** A grant is not an arrival: between the board and the server's clock a request meets a
wake-up, the event loop, the send and the network (on a cluster also the reply that booked it), each delayed
now and then by a busy CPU. Slots spaced exactly ``1/rate`` put rate + 2 in a second at the server as soon as
two requests rate + 1 apart are delayed by one interval (48 ms at 20/s) more than each other, and a loaded
machine did that (22 in a second at 20/s). Those delays are a matter of milliseconds whatever the rate, so the
allowance is a time too: every board spaces its slots so that rate + 1 gaps span at least ``1 + ALLOWANCE``
seconds (:func:`board_interval`). The server then counts rate + 2 in a second only if two requests' delays
differ by more than :data:`ALLOWANCE` (100 ms): half again the most measured, 64 ms, with two runs on one Dask
scheduler on a 2-core machine at a load average of 9-13 (``bench/rate_bench.py``, BENCHMARKS.md). It costs nothing at whole
rates up to 9/s (their interval is room enough), 5% at 20/s and at most 9% at high rates: a request
sent a little early is a promise broken, one sent a little later is not. (A fraction of the rate, the first
margin, protected high rates less: 2% left 27 ms at 150/s, but 69 ms at 20/s.)

**The machine's board** is a file of 32 bytes, ``<runtime dir>/rate-boards/<host>/<sha256 of the key>/board``,
read and written under ``flock``. Its slot is on CLOCK_MONOTONIC (``time.monotonic``), one clock for every
process of the machine. The kernel releases a ``flock`` when its holder dies, so a run killed anywhere (even
holding the lock) never leaves the board stuck. The runs using a board are files in its ``runs/`` folder, each
holding the run's rate and held under ``flock`` by its run for as long as it runs; a run file whose lock can be
taken is a dead run's, and is removed by whoever finds it (at most :data:`RECHECK` seconds after the death).
The runtime dir is ``$XDG_RUNTIME_DIR`` (per user, in memory, emptied at log-out), else a folder of this user's
own in the temporary folder: a board is shared by one user's runs, and a board file from another clock (a
reboot, another machine) is recognised and started afresh.
"""
from __future__ import annotations

import fcntl
import hashlib
import math
import os
import socket
import stat
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pipeline.core.base.errors import PipelineFailure, UserError

#: A late wake-up may start the next interval this much (as a fraction of the interval) before the
#: moment it actually woke, to win back timer overshoot (~1 ms per sleep would cost 2% at 20/s).
#: Small enough that 21 consecutive gaps can never fit in one second at 20/s: 21 * 0.96 / 20 > 1.
CATCH_UP = 0.04
#: seconds by which the delays of two requests on their way from the board to the server may differ before the
#: server could count rate + 2 in one second (every board's spacing keeps room for them: :func:`board_interval`)
ALLOWANCE = 0.1
#: a machine board looks again at which runs use it (and at their rates) this often, in seconds
RECHECK = 1.0

#: the machine board's file: next free slot, the interval that slot was booked with, the interval of the
#: politest run using the board, and when the runs were last looked at (all on CLOCK_MONOTONIC, seconds)
_RECORD = struct.Struct("<4d")
#: a slot further ahead of "now" than its interval plus this is from another clock (a reboot, another machine)
_FOREIGN = 1.0


def board_interval(rate: float) -> float:
    """Seconds between two slots of a board for ``rate`` (> 0) requests a second: ``1/rate``, or more where that
    is needed for the ``limit = floor(rate) + 1`` gaps that would let ``limit + 1`` requests into one second to
    span ``1 + ALLOWANCE`` seconds (the first of them back-dated by up to ``CATCH_UP`` of an interval)."""
    limit = math.floor(rate) + 1
    return max(1.0 / rate, (1.0 + ALLOWANCE) / (limit - CATCH_UP))


def take_slot(next_free: float, now: float, interval: float) -> tuple[float, float]:
    """``(next_free after this call, seconds to wait)``; a wait of 0 means the slot was taken now.

    Slots stay at least ``interval`` apart and a grant happens at most ``CATCH_UP * interval`` after its slot,
    so n + 1 grants span at least ``(n - CATCH_UP) * interval``: at ``interval = 1/rate`` a 1-second window
    never holds more than ``floor(rate + CATCH_UP) + 1`` of them (rate + 1 for a whole rate).
    """
    slot = max(next_free, now - CATCH_UP * interval)
    if slot > now:
        return next_free, slot - now
    return slot + interval, 0.0


def book_slot(next_free: float, now: float, interval: float) -> tuple[float, float]:
    """``(next_free after this booking, seconds until the booked slot)``: always books, unlike :func:`take_slot`
    (the rule of a board far away, where every question is a round trip: :mod:`.rate_cluster`). Slots are at
    least ``interval`` apart; an idle board's next slot is "now" (counted as up to ``CATCH_UP`` of an interval
    ago, to win back timer overshoot, never more)."""
    slot = max(next_free, now - CATCH_UP * interval)
    return slot + interval, max(0.0, slot - now)


class Board(Protocol):
    """Where the next free slot is kept, for every limiter that shares a rate."""

    def take(self) -> float:
        """Take the slot if it has come (return 0), else return how long to wait before asking again."""


@runtime_checkable
class HeldBoard(Protocol):
    """A board far away (a Dask scheduler's, :mod:`.rate_cluster`): one call that returns when the caller's turn
    has come (it books a slot there and sleeps here), since asking again and again over the network would cost
    a round trip per question."""

    async def turn(self) -> None:
        """Return when this caller may send its request."""


class LocalBoard:
    """The board of one process at ``rate`` (its event loops run one at a time, so no lock is needed)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock, self.next_free = board_interval(rate), clock, 0.0

    def take(self) -> float:
        self.next_free, wait = take_slot(self.next_free, self.clock(), self.interval)
        return wait


class MachineBoard:
    """A handle on the machine's board in ``folder`` for a run at ``rate``: only a folder and a rate, so it
    pickles and forks; each process opens the file for itself (a ``flock`` is held per open file, so a file
    opened before a fork would be one lock for parent and child)."""

    def __init__(self, folder: str, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.folder, self.interval, self.clock = folder, board_interval(rate), clock
        self._fd: int | None = None
        self._pid = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": 0}

    def take(self) -> float:
        """:func:`take_slot` on the file, at the politest rate of the runs using the board (this one's included)."""
        fd = self._file()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            next_free, booked_with, politest, checked = _read(fd)
            now = self.clock()
            looked = not checked <= now < checked + RECHECK
            if looked:
                politest, checked = politest_interval(Path(self.folder)), now
            interval = max(self.interval, politest)
            if next_free > now + booked_with + _FOREIGN:
                next_free = 0.0  # written on another clock: nothing of it applies here
            after, wait = take_slot(next_free, now, interval)
            if wait == 0:
                os.pwrite(fd, _RECORD.pack(after, interval, politest, checked), 0)
            elif looked:
                os.pwrite(fd, _RECORD.pack(next_free, booked_with, politest, checked), 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return wait

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = _open_board(Path(self.folder)), os.getpid()
        return self._fd

    def close(self) -> None:
        """Close this process's file (a process that runs many runs, such as the tests, would collect them)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def _open_board(folder: Path) -> int:
    try:
        return os.open(folder / "board", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise PipelineFailure(f"cannot open the machine's rate board {folder / 'board'}: {exc.strerror}") from None


def _read(fd: int) -> tuple[float, float, float, float]:
    """The board's record; zeros for a new file, and for anything that is not one (never a stuck board)."""
    data = os.pread(fd, _RECORD.size, 0)
    values = _RECORD.unpack(data) if len(data) == _RECORD.size else (0.0,) * 4
    return values if all(math.isfinite(v) and v >= 0 for v in values) else (0.0, 0.0, 0.0, 0.0)


def politest_interval(folder: Path) -> float:
    """The longest interval any live run using the board in ``folder`` asked for (0 when none); the run files of
    dead runs (their lock is free) are removed on the way."""
    longest = 0.0
    with suppress(FileNotFoundError):
        for entry in os.scandir(folder / "runs"):
            if entry.name.startswith("."):
                continue  # a run file being made (:func:`_join`)
            rate = _live_rate(Path(entry.path))
            if rate:
                longest = max(longest, board_interval(rate))
    return longest


def _live_rate(path: Path) -> float:
    """The rate in a run file whose run is alive (its lock is held), else 0 (and the file of a dead run removed)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0.0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: the run is alive
            text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
            try:
                rate = float(text)
            except ValueError:
                return 0.0
            return rate if math.isfinite(rate) and rate > 0 else 0.0
        with suppress(FileNotFoundError):
            path.unlink()
        return 0.0
    finally:
        os.close(fd)


def _force_recheck(folder: Path) -> None:
    """Make the next taker look at the runs now (one joined or left), instead of within :data:`RECHECK`."""
    fd = _open_board(folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        next_free, booked_with, politest, _ = _read(fd)
        os.pwrite(fd, _RECORD.pack(next_free, booked_with, politest, 0.0), 0)
        # checked = 0 is "never" for every clock reading after the first second of uptime
    finally:
        os.close(fd)  # closing drops the lock


def _join(folder: Path, rate: float) -> tuple[Path, int]:
    """Add this run's file (its rate, under a lock held until :func:`_leave` or death); made under a hidden
    name and renamed when locked, so no one can take it for a dead run's while it is being made."""
    runs = folder / "runs"
    name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    hidden = runs / f".{name}"
    try:
        runs.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{rate!r}\n".encode())
        os.rename(hidden, runs / name)
    except OSError as exc:
        raise PipelineFailure(f"cannot join the machine's rate board in {folder}: {exc.strerror}") from None
    return runs / name, fd


def _leave(path: Path, fd: int) -> None:
    with suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)


@contextmanager
def machine_board(key: str, rate: float, root: Path | None = None) -> Iterator[MachineBoard]:
    """This machine's board for ``key``, used by this run at ``rate`` (> 0) requests/s while the block runs."""
    folder = board_folder(key, root)
    path, fd = _join(folder, rate)
    board = MachineBoard(str(folder), rate)
    try:
        _force_recheck(folder)
        yield board
    finally:
        board.close()
        _leave(path, fd)
        with suppress(PipelineFailure):
            _force_recheck(folder)


def board_folder(key: str, root: Path | None = None) -> Path:
    """Where the board for ``key`` lives (made if missing): one folder per key, named by its hash."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    folder = (root or rate_root()) / _host_name() / digest
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise PipelineFailure(f"cannot make the machine's rate board {folder}: {exc.strerror}") from None
    return folder


def _host_name() -> str:
    name = "".join(c if c.isalnum() or c in "-." else "_" for c in socket.gethostname())
    return name.strip(".") or "host"


def rate_root() -> Path:
    """The folder of this user's rate boards on this machine: under ``$XDG_RUNTIME_DIR``, else a folder of
    this user's own (mode 0700) in the temporary folder, refused if someone else owns it or it is a link."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime) and Path(runtime).is_dir():
        base = Path(runtime) / "openimages-pipeline"
    else:
        base = Path(tempfile.gettempdir()) / f"openimages-pipeline-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(base)
    except OSError as exc:
        raise PipelineFailure(f"cannot make the folder of the rate boards {base}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise UserError(f"the folder of the rate boards {base} is not a folder of yours alone (a link, another "
                        "user's, or writable by others): remove it, or set XDG_RUNTIME_DIR")
    return base / "rate-boards"
