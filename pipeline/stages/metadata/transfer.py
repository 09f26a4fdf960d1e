"""Download one big file to disk: streamed, resumable, size-verified, retried under the one HTTP policy.

Open Images' box file is 2.3 GB; a dropped connection at 90 % must not restart from zero. Bytes go to
``<dest>.part``, with the server's validator and the announced total beside it, so a later attempt (or run)
asks for the rest (``Range`` + ``If-Range``) and starts over if the file changed meanwhile. Only a complete
body is renamed to ``dest``, so ``dest`` existing means "complete". Retries, backoff, the deadline, the
size cap and the rest are :mod:`pipeline.core.net.http`'s; an attempt that made progress resumes at once
without counting as a failure. The details: docs/architecture.md ("metadata").
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3

from pipeline.core.base.errors import PipelineFailure
from pipeline.core.base.progress import Progress
from pipeline.core.base.redact import public_url
from pipeline.core.base.safe import is_http_url, require_http_url
from pipeline.core.net.http import (
    MAX_REDIRECTS,
    USER_AGENT,
    Attempts,
    GiveUp,
    HttpPolicy,
    ProgressGuard,
    TooSlow,
    is_retryable,
    parse_retry_after,
)

CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_CONNECTION_FAILED = "connection failed"
#: what a user can check when no server answered at all (offline, a typo in the URL, a mirror not started)
_NO_SERVER = "; is the network up and source.base_url right? (fetch: --base-url for a mirror)"
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
#: what reading a body can raise when the connection breaks or stalls
_BODY_ERRORS = (urllib3.exceptions.HTTPError, requests.RequestException, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class TransferResult:
    url: str
    path: Path
    bytes: int
    #: bytes of an earlier broken download (``.part``) found when this call started
    resumed_from: int
    attempts: int


class _Retry(Exception):
    """A transient failure; ``after`` is the server's Retry-After, if any."""

    def __init__(self, reason: str, after: float | None = None, stalled: bool = False) -> None:
        super().__init__(reason)
        self.after = after
        #: cut by the minimum-progress rule: counts as a failure even though some bytes came
        self.stalled = stalled


def new_session() -> requests.Session:
    """A session that sends our user agent and follows at most :data:`MAX_REDIRECTS` redirects, only to http(s)."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    session.max_redirects = MAX_REDIRECTS
    return session


def fetch(url: str, dest: Path, policy: HttpPolicy, session: requests.Session | None = None,
          progress: bool = True) -> TransferResult:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify its size, return what happened."""
    require_http_url(url, "download URL")
    shown = public_url(url)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, meta_path = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    session = session or new_session()
    resumed_from = _resumable_bytes(part, meta_path, url)
    tries = Attempts(policy)
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            tries.start()
            total = _attempt(session, url, part, meta_path, policy, tries, dest.name, progress)
        except _Retry as exc:
            progressed = not exc.stalled and (part.stat().st_size if part.exists() else 0) > before
            try:
                time.sleep(tries.failed(str(exc), exc.after, progressed))
            except GiveUp as stop:
                unreachable = str(exc).startswith(_CONNECTION_FAILED)
                raise PipelineFailure(f"{shown}: {stop}" + (_NO_SERVER if unreachable else "")) from None
            continue
        except GiveUp as stop:
            raise PipelineFailure(f"{shown}: {stop}") from None
        os.replace(part, dest)
        meta_path.unlink(missing_ok=True)
        return TransferResult(url, dest, total, resumed_from, tries.attempts)


def _resumable_bytes(part: Path, meta_path: Path, url: str) -> int:
    """Bytes of ``part`` that a resume may keep: none unless its sidecar says it came from ``url``."""
    if part.exists() and _read_meta(meta_path).get("url") == url:
        return part.stat().st_size
    part.unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)
    return 0


def _read_meta(meta_path: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _attempt(session: requests.Session, url: str, part: Path, meta_path: Path, policy: HttpPolicy,
             tries: Attempts, name: str, progress: bool) -> int:
    """One GET: append to ``part`` from where it ends; return the verified total, or raise ``_Retry``."""
    shown = public_url(url)
    offset = part.stat().st_size if part.exists() else 0
    meta = _read_meta(meta_path) if offset else {}
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if meta.get("validator"):
            headers["If-Range"] = meta["validator"]
    try:
        response = session.get(url, headers=headers, stream=True, timeout=(policy.connect_timeout, policy.read_timeout))
    except requests.TooManyRedirects:
        raise PipelineFailure(f"{shown}: more than {MAX_REDIRECTS} redirects (a redirect loop?)") from None
    except (requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema, requests.exceptions.InvalidURL):
        raise PipelineFailure(f"{shown}: redirected to a URL that is not http(s)") from None
    except _TRANSIENT as exc:
        raise _Retry(f"{_CONNECTION_FAILED}: {type(exc).__name__}") from None
    with response:
        if not is_http_url(response.url):
            raise PipelineFailure(f"{shown}: redirected to a URL that is not http(s)")
        if response.status_code == 416 and offset and _total_of(response) == offset == meta.get("total"):
            return offset  # the previous attempt got every byte but stopped before the rename
        if response.status_code == 416:
            part.unlink(missing_ok=True)  # our partial file is not a prefix of theirs: start over
            raise _Retry("HTTP 416 on resume")
        if is_retryable(response.status_code):
            raise _Retry(f"HTTP {response.status_code}", parse_retry_after(response.headers.get("Retry-After")))
        if response.status_code not in (200, 206):
            raise PipelineFailure(f"{shown}: HTTP {response.status_code} {response.reason}")
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("", "identity"):
            raise PipelineFailure(f"{shown}: unexpected Content-Encoding {encoding!r} (asked for identity)")
        offset, total = _start_position(response, offset, meta.get("total"))
        if total is not None and total > policy.max_bytes:
            raise PipelineFailure(f"{shown}: {total:,} bytes is more than the {policy.max_bytes:,}-byte cap "
                                  "(metadata.max_bytes)")
        if offset == 0:
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            meta_path.write_text(json.dumps({"url": url, "validator": validator, "total": total}))
        size = _stream(response, part, offset, total, policy, tries, name, progress)
    if total is None:
        return size  # the server did not say how big: the connection closed cleanly under the cap
    if size < total:
        raise _Retry(f"body ended at {size:,} of {total:,} bytes")
    if size > total:
        part.unlink(missing_ok=True)
        raise _Retry(f"got {size:,} bytes, more than the announced {total:,}")
    return size


def _start_position(response: requests.Response, offset: int, known_total: int | None) -> tuple[int, int | None]:
    """Where this response's body starts in the file, and the file's total size."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        total = _total_of(response)
        if match and int(match.group(1)) == offset and (known_total is None or total in (None, known_total)):
            return offset, total
        raise _Retry("the server answered a different range")  # part is kept; next attempt asks again
    length = response.headers.get("Content-Length", "")
    return 0, int(length) if length.isdigit() else None


def _total_of(response: requests.Response) -> int | None:
    match = re.search(r"/(\d+)\s*$", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _stream(response: requests.Response, part: Path, offset: int, total: int | None, policy: HttpPolicy,
            tries: Attempts, name: str, progress: bool) -> int:
    """Append the body to ``part`` (truncated to ``offset`` first) with progress; return its size.

    A body over the cap is refused and its bytes thrown away (a server that never stops must not leave a
    "complete" file behind); one past the deadline or under the minimum speed is cut and retried.
    """
    size = offset
    guard = ProgressGuard(policy)
    with part.open("r+b" if offset else "wb") as fh, Progress(total, name, "B", initial=offset, leave=False,
                                                            enabled=progress) as bar:
        fh.truncate(offset)
        fh.seek(offset)
        while True:
            try:  # read1: whatever has arrived (up to CHUNK), so a slow body is judged as it comes
                chunk = response.raw.read1(CHUNK, decode_content=False)
            except _BODY_ERRORS as exc:
                raise _Retry(f"connection broke after {size:,} bytes ({type(exc).__name__})") from None
            if not chunk:
                break
            size += len(chunk)
            if size > policy.max_bytes:
                fh.close()
                part.unlink(missing_ok=True)
                raise PipelineFailure(f"{public_url(response.url)}: more than the {policy.max_bytes:,}-byte cap "
                                      "(metadata.max_bytes); nothing kept")
            fh.write(chunk)
            bar.update(len(chunk))
            try:
                guard.feed(len(chunk))
            except TooSlow as exc:
                raise _Retry(str(exc), stalled=True) from None
            if tries.remaining() <= 0:
                raise GiveUp(f"took longer than the {policy.deadline:g} s deadline (runtime.metadata_deadline)")
    return size
