"""Download one big file to disk: streamed, resumable, size-verified, retried.

Open Images' box file is 2.3 GB; a dropped connection at 90 % must not restart from zero. Bytes go to
``<dest>.part``; the server's validator (ETag, else Last-Modified) and the announced total are kept
next to it in ``<dest>.part.json``, so a later attempt (or a later run) asks for the rest with
``Range: bytes=N-`` and ``If-Range: <validator>``. If the file changed on the server meanwhile, the
server answers 200 with the whole new file and we start over instead of splicing two versions.
Only when the byte count equals the total the server announced (Content-Length, or the total of
Content-Range) is ``.part`` renamed to ``dest``, so ``dest`` existing means "complete".

Connection errors, timeouts, short bodies, 429 and 5xx are retried with exponential backoff (an attempt
that made progress resumes at once); other HTTP errors fail immediately with one line.
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from pipeline.errors import PipelineFailure
from pipeline.safe import require_http_url

CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
#: transient failures worth another attempt
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
#: what reading a body can raise when the connection breaks or stalls
_BODY_ERRORS = (urllib3.exceptions.HTTPError, requests.RequestException, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class TransferPolicy:
    """Timeouts, retries and size cap of one transfer."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    #: consecutive failed attempts (without progress) before giving up
    retries: int = 5
    #: first backoff delay in seconds, doubled per failure, capped by ``max_backoff``
    backoff: float = 1.0
    max_backoff: float = 30.0
    #: refuse bodies larger than this (bytes)
    max_bytes: int = 16 << 30
    #: a progress bar on a terminal (never in logs)
    progress: bool = True


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

    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.after = after


def fetch(url: str, dest: Path, policy: TransferPolicy = TransferPolicy(),
          session: requests.Session | None = None) -> TransferResult:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify its size, return what happened."""
    require_http_url(url, "download URL")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, meta_path = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    session = session or requests.Session()
    resumed_from = _resumable_bytes(part, meta_path, url)
    failures = attempts = 0
    while True:
        attempts += 1
        before = part.stat().st_size if part.exists() else 0
        try:
            total = _attempt(session, url, part, meta_path, policy, dest.name)
        except _Retry as exc:
            progressed = (part.stat().st_size if part.exists() else 0) > before
            failures = 0 if progressed else failures + 1
            if failures > policy.retries:
                raise PipelineFailure(f"{url}: giving up after {attempts} attempts ({exc})") from None
            if failures:
                delay = min(policy.max_backoff, policy.backoff * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
                time.sleep(max(delay, min(exc.after or 0.0, policy.max_backoff)))
            continue
        os.replace(part, dest)
        meta_path.unlink(missing_ok=True)
        return TransferResult(url, dest, total, resumed_from, attempts)


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


def _attempt(session: requests.Session, url: str, part: Path, meta_path: Path, policy: TransferPolicy,
             name: str) -> int:
    """One GET: append to ``part`` from where it ends; return the verified total, or raise ``_Retry``."""
    offset = part.stat().st_size if part.exists() else 0
    meta = _read_meta(meta_path) if offset else {}
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if meta.get("validator"):
            headers["If-Range"] = meta["validator"]
    try:
        response = session.get(url, headers=headers, stream=True,
                               timeout=(policy.connect_timeout, policy.read_timeout))
    except _TRANSIENT as exc:
        raise _Retry(f"connection failed: {type(exc).__name__}") from None
    with response:
        if response.status_code == 416 and offset and _total_of(response) == offset == meta.get("total"):
            return offset  # the previous attempt got every byte but stopped before the rename
        if response.status_code == 416:
            part.unlink(missing_ok=True)  # our partial file is not a prefix of theirs: start over
            raise _Retry("HTTP 416 on resume")
        if response.status_code in _RETRY_STATUS:
            raise _Retry(f"HTTP {response.status_code}", _retry_after(response))
        if response.status_code not in (200, 206):
            raise PipelineFailure(f"{url}: HTTP {response.status_code} {response.reason}")
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("", "identity"):
            raise PipelineFailure(f"{url}: unexpected Content-Encoding {encoding!r} (asked for identity)")
        offset, total = _start_position(response, offset, meta.get("total"))
        if total is not None and total > policy.max_bytes:
            raise PipelineFailure(f"{url}: {total:,} bytes is more than the {policy.max_bytes:,}-byte cap")
        if offset == 0:
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            meta_path.write_text(json.dumps({"url": url, "validator": validator, "total": total}))
        size = _stream(response, part, offset, total, policy, name)
    if total is None:
        return size  # the server did not say how big: the connection closed cleanly, take what came
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
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _total_of(response: requests.Response) -> int | None:
    match = re.search(r"/(\d+)\s*$", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def _stream(response: requests.Response, part: Path, offset: int, total: int | None, policy: TransferPolicy,
            name: str) -> int:
    """Append the body to ``part`` (truncated to ``offset`` first) with a progress bar; return its size."""
    size = offset
    with part.open("r+b" if offset else "wb") as fh, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
        disable=None if policy.progress else True, leave=False,
    ) as bar:
        fh.truncate(offset)
        fh.seek(offset)
        chunks = response.raw.stream(CHUNK, decode_content=False)
        while True:
            try:
                chunk = next(chunks, None)
            except _BODY_ERRORS as exc:
                raise _Retry(f"connection broke after {size:,} bytes ({type(exc).__name__})") from None
            if chunk is None:
                break
            size += len(chunk)
            if size > policy.max_bytes:
                raise PipelineFailure(f"{response.url}: more than the {policy.max_bytes:,}-byte cap")
            fh.write(chunk)
            bar.update(len(chunk))
    return size
