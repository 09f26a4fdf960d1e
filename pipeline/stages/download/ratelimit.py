"""The download's side of the request rate: which board a run books on (:func:`rate_key`), and the limiter
every request of a process awaits (:class:`RateLimiter`). The boards and their rule are
:mod:`pipeline.core.net.rate` (this machine) and :mod:`pipeline.core.net.rate_cluster` (a Dask scheduler); the engine
hands the stage the right one (:meth:`pipeline.core.compute.engine.Engine.rate_board`).
"""
from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from itertools import islice
from urllib.parse import urlsplit

from pipeline.core.base.safe import is_http_url
from pipeline.core.net.rate import Board, LocalBoard, RemoteBoard

#: the image server of a run is judged from this many of its URLs (its first, in ImageID order)
KEY_SAMPLE = 1000


def rate_key(setting: str, urls: Iterable[str]) -> str:
    """The board a run books on: ``runtime.rate_key`` when set, else the image server's site (:func:`site`)
    that most of the first :data:`KEY_SAMPLE` http(s) URLs are on, so that runs downloading from one server
    share one rate without being told to. A run's photos come from one server (Flickr or CVDF) in practice;
    one whose URLs span several books all of them on the most frequent one's board."""
    if setting:
        return setting
    sites = Counter(site(url) for url in islice((u for u in urls if is_http_url(u)), KEY_SAMPLE))
    return min(sites, key=lambda s: (-sites[s], s)) if sites else "no-server"


def site(url: str) -> str:
    """``host[:port]`` of a URL, lower case and without credentials; a DNS name of three labels or more loses
    its first one, since one server answers under many names (``farm3.staticflickr.com`` and
    ``c1.staticflickr.com`` are both ``staticflickr.com``). IP addresses are kept whole."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    labels = host.split(".")
    if len(labels) >= 3 and not all(label.isdigit() for label in labels) and ":" not in host:
        host = ".".join(labels[1:])
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


class RateLimiter:
    """``await limiter.wait()`` before each request; at most ``rate`` grants per second (``rate`` 0 = off), on
    ``board`` (shared with other processes and runs) or, without one, a board of this process alone.

    The callers of one process queue on an asyncio lock, so only one of them at a time asks the board.
    """

    def __init__(self, rate: float, board: Board | RemoteBoard | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not rate >= 0:  # also NaN
            raise ValueError(f"rate must be a number >= 0, got {rate}")
        self.rate = rate
        self.board = board or (LocalBoard(rate) if rate else None)
        self._remote = isinstance(self.board, RemoteBoard)
        self._sleep = sleep
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _loop_lock(self) -> asyncio.Lock:
        """An asyncio lock for the running loop (a lock cannot be shared between loops; batches run one each)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    async def wait(self) -> None:
        """Return when this caller may send its request."""
        if not self.rate:
            return
        async with self._loop_lock():
            if self._remote:
                await self.board.turn()
                return
            while (delay := self.board.take()) > 0:
                await self._sleep(delay)
