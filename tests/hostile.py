"""A hostile Open Images server on 127.0.0.1 for the tests: every path a scripted answer.

It starts as a faithful copy of the mirror's v6 metadata (fetched once), and a test then spoils one file:
other bytes, a redirect loop, a redirect to ``file://``, a body that drips a byte at a time, one that never
ends, a server that accepts and says nothing. Runs on its own event loop thread, stopped by the fixture.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import requests
from aiohttp import web

from pipeline.core.net.sources import layout
from pipeline.mirror import Mirror

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/openimages/"


@dataclass
class HostileServer:
    """``files`` maps official paths to bytes; ``answers`` maps a path to a coroutine that replaces it."""

    files: dict[str, bytes]
    answers: dict[str, Answer] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    #: the User-Agent of every request, in order
    agents: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pristine = dict(self.files)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/openimages"

    def reset(self) -> None:
        self.files, self.answers, self.hits, self.agents = dict(self.pristine), {}, {}, []

    def url(self, path: str) -> str:
        """The URL of a path served outside the Open Images layout (``/status/503/x``)."""
        return f"http://127.0.0.1:{self.port}{path}"

    # --- what a test can make a path do ---------------------------------------------------------------
    def serve(self, path: str, body: bytes) -> None:
        self.files[path] = body

    def first(self, path: str, status: int, headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` (with ``headers``) to the first request of ``path``, then serve its file."""
        async def answer(request: web.Request) -> web.StreamResponse:
            if self.hits[path] == 1:
                return web.Response(status=status, headers=headers or {})
            return web.Response(body=self.files[path])
        self.answers[path] = answer

    def redirect(self, path: str, location: str) -> None:
        async def answer(request: web.Request) -> web.StreamResponse:
            return web.Response(status=302, headers={"Location": location})
        self.answers[path] = answer

    def redirect_loop(self, path: str) -> None:
        self.redirect(path, f"{self.base_url}/{path}")

    def drip(self, path: str, length: int = 100_000, every: float = 0.05) -> None:
        """Announce ``length`` bytes, then send one every ``every`` seconds (a reader that is never idle long)."""
        async def answer(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Length": str(length)})
            await response.prepare(request)
            for _ in range(length):
                await response.write(b"x")
                await asyncio.sleep(every)
            return response
        self.answers[path] = answer

    def endless(self, path: str, chunk: int = 1 << 16) -> None:
        """No length, and bytes for ever (until the client hangs up)."""
        async def answer(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            await response.prepare(request)
            block = b"ImageID,Source\n" + b"0" * chunk
            while True:
                await response.write(block)
                await asyncio.sleep(0)
        self.answers[path] = answer

    def silent(self, path: str) -> None:
        """Accept the request and never answer."""
        async def answer(request: web.Request) -> web.StreamResponse:
            await asyncio.sleep(3600)
            return web.Response()
        self.answers[path] = answer

    # --- the server ------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path[len(PREFIX):] if request.path.startswith(PREFIX) else request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        self.agents.append(request.headers.get("User-Agent", ""))
        if path in self.answers:
            return await self.answers[path](request)
        if path in self.files:
            return web.Response(body=self.files[path])
        return web.Response(status=404)

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        for task in asyncio.all_tasks(self.loop):  # a drip or a silence still answering: end it quietly
            task.cancel()
        self.loop.run_until_complete(runner.cleanup())


def v6_files(mirror: Mirror) -> dict[str, bytes]:
    lay = layout("v6")
    paths = [lay.classes, lay.hierarchy, *lay.images.values(), *lay.boxes.values()]
    return {path: requests.get(f"{mirror.base_url}/{path}", timeout=30).content for path in paths}


@contextmanager
def serving(files: dict[str, bytes]) -> Iterator[HostileServer]:
    """A :class:`HostileServer` running on its own thread while the block runs."""
    server = HostileServer(files)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(10)
    try:
        yield server
    finally:
        server.loop.call_soon_threadsafe(server.loop.stop)
        thread.join(10)


@pytest.fixture(scope="module")
def hostile_server(mirror: Mirror) -> Iterator[HostileServer]:
    with serving(v6_files(mirror)) as server:
        yield server


@pytest.fixture
def hostile(hostile_server: HostileServer) -> Iterator[HostileServer]:
    hostile_server.reset()
    yield hostile_server
    hostile_server.reset()
