"""The mirror's HTTP server (aiohttp) and :class:`Mirror`, which runs it on its own event loop thread.

One catch-all handler looks each path up in a table built at start-up; per-request latency is an
``asyncio.sleep`` so a benchmark's hundreds of concurrent connections cost no threads. Fault state
(how often a URL was hit, which metadata files were already cut once) lives on the loop thread only.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from aiohttp import web

from pipeline.core.base.errors import UserError
from pipeline.core.base.io import write_parquet
from pipeline.mirror import dataset, tables
from pipeline.mirror.drawing import placeholder_png

PLACEHOLDER_PATH = "/flickr/photo_unavailable.png"
#: how long the ``slow`` fault stalls mid-body, seconds
SLOW_STALL = 3.0
#: how many first requests the ``rate_limited`` and ``server_error`` faults refuse
REFUSALS = 2
_CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "csv": "text/csv", "json": "application/json"}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: body bytes a handler sent, for the request log
_NBYTES = web.RequestKey("nbytes", int)


class RequestRecord(NamedTuple):
    """What the server saw: ``t`` is time.monotonic() when the request arrived."""

    t: float
    method: str
    path: str
    status: int
    nbytes: int  # body bytes sent (0 for HEAD)


@dataclass
class _Original:
    record: dataset.ImageRecord
    file: Path | None


class MirrorApp:
    """Request handling: metadata, originals (with faults), CVDF copies, the placeholder."""

    def __init__(self, root: Path, records: list[dataset.ImageRecord]) -> None:
        self.latency = 0.0
        self.metadata_truncate_once = False
        self.requests: list[RequestRecord] = []
        self.cleared_at = 0.0  # monotonic time of the last clear_requests()
        self.metadata: dict[str, bytes] = {}
        self._originals = {tables.original_path(r): _Original(r, root / r.served if r.served else None) for r in records}
        self._cvdf = {f"/cvdf/{r.Subset}/{r.ImageID}.jpg": root / r.cvdf for r in records}
        self._placeholder = placeholder_png()
        self._etags: dict[str, str] = {}
        self._hits: dict[str, int] = {}
        self.cut_paths: set[str] = set()  # metadata files already cut once
        self.index: dict[str, Any] = {}

    def reset_faults(self) -> None:
        self._hits.clear()
        self.cut_paths.clear()

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Latency first (a benchmark switch), then the request log, whatever happens in the handler."""
        arrived = time.monotonic()
        status = 500
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            # logged when the answer is done, so a request that arrived before clear_requests() (a stalled
            # "slow" body, say) must not land in the fresh log
            if arrived >= self.cleared_at:
                self.requests.append(RequestRecord(arrived, request.method, request.path, status,
                                                   request.get(_NBYTES, 0)))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _text(request, 405, "method not allowed")
        path = request.path
        if path.startswith("/openimages/") and path[len("/openimages/"):] in self.metadata:
            cut = self.metadata_truncate_once and request.method == "GET" and path not in self.cut_paths
            if cut:
                self.cut_paths.add(path)
            return await self._static(request, self.metadata[path[len("/openimages/"):]], _content_type(path),
                                      "cut" if cut else "")
        if path in self._cvdf:
            return await self._static(request, self._cvdf[path].read_bytes(), "image/jpeg")
        if path in self._originals:
            return await self._original(request, self._originals[path])
        if path == PLACEHOLDER_PATH:
            return await self._static(request, self._placeholder, "image/png")
        if path == "/":
            return _body(request, 200, json.dumps(self.index, indent=1).encode(), "application/json")
        return _text(request, 404, "not found")

    async def _original(self, request: web.Request, original: _Original) -> web.StreamResponse:
        """A Flickr original, misbehaving as its fault says."""
        path, fault = request.path, original.record.fault
        hits = self._hits[path] = self._hits.get(path, 0) + 1
        refused = {"not_found": 404, "gone": 410, "forbidden": 403}
        if fault in refused:
            return _text(request, refused[fault], "photo unavailable")
        if fault == "rate_limited" and hits <= REFUSALS:
            return _text(request, 429, "too many requests", {"Retry-After": "1"})
        if fault == "server_error" and hits <= REFUSALS:
            return _text(request, 500, "internal server error")
        if fault == "placeholder":
            raise web.HTTPFound(self.index["placeholder_url"])
        if original.file is None:  # bad_url: nothing is served at that path over http
            return _text(request, 404, "not found")
        body = original.file.read_bytes()
        if fault == "not_image":
            return _body(request, 200, body, "text/html; charset=utf-8")
        content_type = _CONTENT_TYPES[original.record.ext]
        misbehave = {"slow": "stall", "truncated": "cut"}.get(fault, "") if hits == 1 else ""
        return await self._static(request, body, content_type, misbehave)

    async def _static(self, request: web.Request, body: bytes, content_type: str, misbehave: str = "") -> web.StreamResponse:
        """A file with validators and byte ranges, as S3/GCS serve them (HEAD, Range, If-Range, 304).

        ``misbehave`` (``cut`` or ``stall``) breaks this one GET's body; see :func:`_misbehave`.
        """
        etag = self._etags.get(request.path)
        if etag is None:
            etag = self._etags[request.path] = '"' + hashlib.md5(body).hexdigest() + '"'
        headers = {"ETag": etag, "Last-Modified": tables.LAST_MODIFIED, "Accept-Ranges": "bytes"}
        if request.headers.get("If-None-Match") == etag:
            return _body(request, 304, b"", content_type, headers)
        status, part = 200, body
        ranges = request.headers.get("Range")
        if ranges and request.headers.get("If-Range", etag) in (etag, tables.LAST_MODIFIED):
            span = parse_range(ranges, len(body))
            if span is None:
                return _body(request, 416, b"", content_type, {**headers, "Content-Range": f"bytes */{len(body)}"})
            if span != (0, len(body)):
                status, part = 206, body[span[0]:span[1]]
                headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{len(body)}"
        if misbehave and request.method == "GET":
            return await _misbehave(request, misbehave, status, part, content_type, headers)
        return _body(request, status, part, content_type, headers)


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``a-`` / ``-n`` -> half-open (start, stop); None when unsatisfiable.

    Several ranges at once are answered with the whole file, which RFC 9110 allows.
    """
    match = _RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return (0, size)
    first, last = match.groups()
    if first == "":
        start, stop = max(0, size - int(last)), size
    else:
        start, stop = int(first), min(size, int(last) + 1) if last else size
    if start >= size or start >= stop:
        return None
    return start, stop


def _content_type(path: str) -> str:
    return _CONTENT_TYPES.get(path.rsplit(".", 1)[-1], "application/octet-stream")


def _body(request: web.Request, status: int, body: bytes, content_type: str,
          headers: dict[str, str] | None = None) -> web.Response:
    request[_NBYTES] = 0 if request.method == "HEAD" else len(body)
    response = web.Response(status=status, body=body, headers=headers)
    response.content_type = content_type.split(";")[0]
    if "charset=" in content_type:
        response.charset = content_type.split("charset=")[1]
    return response


def _text(request: web.Request, status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return _body(request, status, f"<html><body>{text}</body></html>\n".encode(), "text/html; charset=utf-8", headers)


async def _misbehave(request: web.Request, how: str, status: int, body: bytes, content_type: str,
                    headers: dict[str, str]) -> web.StreamResponse:
    """Promise ``body`` with its full Content-Length, then drop the connection half-way (``cut``) or
    send a little and stall for :data:`SLOW_STALL` seconds before the rest (``stall``)."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = content_type
    response.content_length = len(body)
    await response.prepare(request)
    first = len(body) // 2 if how == "cut" else min(1024, len(body) // 4)
    sent = 0
    try:
        await response.write(body[:first])
        sent = first
        if how == "cut":
            assert request.transport is not None
            request.transport.close()
        else:
            await asyncio.sleep(SLOW_STALL)
            await response.write(body[first:])
            sent = len(body)
            await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client gave up (a read timeout): that is the point of the fault
    finally:
        request[_NBYTES] = sent
    return response


class Mirror:
    """A local Open Images + Flickr + CVDF mirror on 127.0.0.1, for tests, the demo and benchmarks.

    Use as a context manager (or ``start()``/``stop()``). See the package docstring for the layout.
    """

    def __init__(self, root: str | Path, labels: Sequence[str] = ("Hamburger", "Sandwich"), images_per_label: int = 12,
                 size: tuple[int, int] = (320, 240), faults: bool = True, seed: int = 0, port: int = 0,
                 latency: float = 0.0, host: str = "127.0.0.1", progress: bool = False) -> None:
        self.root = Path(root)
        mids = dataset.resolve_labels([labels] if isinstance(labels, str) else labels)
        self.spec = dataset.Spec(mids, int(images_per_label), (int(size[0]), int(size[1])), bool(faults), int(seed))
        self.labels = [dataset.display_names()[m] for m in mids]
        self.host, self._port, self._latency, self._progress = host, port, latency, progress
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._app: MirrorApp | None = None
        self.url = self.base_url = self.cvdf_url = self.placeholder_url = ""
        self.truth = pd.DataFrame()

    def __enter__(self) -> Mirror:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Mirror:
        records = dataset.build(self.root, self.spec, progress=self._progress)
        self._app = MirrorApp(self.root, records)
        self._app.latency = self._latency
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mirror-server", daemon=True)
        self._thread.start()
        try:
            port = self._call(self._serve(), timeout=30)
        except OSError as exc:
            self.stop()
            raise UserError(f"mirror: cannot listen on {self.host}:{self._port} ({exc.strerror or exc})") from None
        self.url = f"http://{self.host}:{port}"
        self.base_url, self.cvdf_url = f"{self.url}/openimages", f"{self.url}/cvdf"
        self.placeholder_url = self.url + PLACEHOLDER_PATH
        self._app.metadata = tables.render(records, self.url)
        self.truth = tables.truth(records, self.url, self.cvdf_url)
        self._app.index = {"url": self.url, "base_url": self.base_url, "cvdf_url": self.cvdf_url,
                           "placeholder_url": self.placeholder_url, "labels": self.labels,
                           "truth": str(self.root / "truth.parquet")}
        write_parquet(self.truth, self.root / "truth.parquet")
        return self

    async def _serve(self) -> int:
        assert self._app is not None
        self._runner = web.AppRunner(self._app.make_app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, backlog=1024)
        await site.start()
        return self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        """Close the server, then cancel handlers still running (a ``slow`` body whose client left)."""
        if self._runner is not None:
            await self._runner.cleanup()
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._shutdown(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = self._runner = None

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log, oldest first."""
        return list(self._app.requests) if self._app else []

    def clear_requests(self) -> None:
        """Empty the log; requests that arrived before this call are never logged, even if they end later."""
        if self._app:
            self._app.cleared_at = time.monotonic()
            self._app.requests.clear()

    def configure(self, latency: float | None = None, metadata_truncate_once: bool | None = None) -> None:
        """Switches at run time: added latency per request; cut the first GET of each metadata file."""
        assert self._app is not None, "start the mirror first"
        if latency is not None:
            self._app.latency = float(latency)
        if metadata_truncate_once is not None:
            self._app.metadata_truncate_once = bool(metadata_truncate_once)
            self._on_loop(self._app.cut_paths.clear)  # every metadata file gets cut once more

    def reset_faults(self) -> None:
        """Forget how often each URL was hit, so transient faults (429, 500, slow, truncated) fire again."""
        assert self._app is not None, "start the mirror first"
        self._on_loop(self._app.reset_faults)

    def _on_loop(self, function: Any) -> None:
        """Run ``function`` on the server's loop and wait, so fault state is only touched by that thread."""

        async def call() -> None:
            function()

        self._call(call(), timeout=10)

    def params_overrides(self) -> dict[str, Any]:
        """Dotted keys for ``load_params(overrides=...)`` that point the pipeline at this mirror."""
        return {"source.base_url": self.base_url, "source.cvdf_url": self.cvdf_url, "labels": list(self.labels)}
