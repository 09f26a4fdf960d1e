"""The HTTP side of a download: one GET with timeouts and a size cap, retried politely.

asyncio + aiohttp rather than a thread pool of ``requests``: on this project's 2-core machines a thread pool
tops out near 220 images/s (the GIL), while one event loop keeps hundreds of requests in flight. Transient
failures (timeouts, resets, cut bodies, 5xx, 429) are retried with exponential backoff and jitter, and a
429's ``Retry-After`` is honoured; 403/404/410 are answers about the photo, final and never retried.
Every attempt, retries included, waits for the shared :class:`RateLimiter`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import random
import time
from dataclasses import dataclass
from datetime import timezone

import aiohttp

from pipeline.download.ratelimit import RateLimiter
from pipeline.params import DownloadParams

#: Answers about the photo itself: recorded under these statuses, never retried.
FINAL_HTTP = {403: "forbidden", 404: "not_found", 410: "gone"}
USER_AGENT = "openimages-pipeline/0.1 (dataset builder; rate-limited, retries with backoff)"
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Fetched:
    """The outcome of fetching one URL. ``status`` is '' when ``body`` arrived and still needs verifying."""

    status: str
    reason: str
    http_status: int
    final_url: str
    body: bytes | None
    attempts: int
    seconds: float


def _answer(status: str, reason: str, http_status: int, final_url: str, body: bytes | None = None) -> Fetched:
    return Fetched(status, reason, http_status, final_url, body, attempts=0, seconds=0.0)


class _Retryable(Exception):
    """A transient failure worth another attempt; ``retry_after`` is the server's wish, in seconds."""

    def __init__(self, reason: str, http_status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.http_status, self.retry_after = reason, http_status, retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half the doubled delay fixed, half random.

    The random half spreads retries from many workers apart, so they do not return in lock-step.
    """
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + rng.uniform(0, delay / 2)


class Fetcher:
    """Fetches URLs over one aiohttp session, sharing one :class:`RateLimiter` between all callers."""

    def __init__(self, session: aiohttp.ClientSession, limiter: RateLimiter, settings: DownloadParams,
                 rng: random.Random | None = None) -> None:
        self.session = session
        self.limiter = limiter
        self.settings = settings
        self.rng = rng or random.Random()

    @staticmethod
    def open_session(settings: DownloadParams) -> aiohttp.ClientSession:
        """A session sized for ``settings.workers`` connections, with connect and read timeouts.

        No total timeout: a 40 MB original on a slow link may take minutes; ``sock_read`` stops a stalled
        server, and ``max_bytes`` stops an endless one.
        """
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout,
                                        sock_read=settings.read_timeout)
        connector = aiohttp.TCPConnector(limit=settings.workers, ttl_dns_cache=300)
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        return aiohttp.ClientSession(timeout=timeout, connector=connector, headers=headers)

    async def fetch(self, url: str) -> Fetched:
        """GET ``url`` with retries; never raises for network or HTTP trouble (it is in the result)."""
        start = time.monotonic()
        settings = self.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self._attempt(url)
                return dataclasses.replace(result, attempts=attempt, seconds=time.monotonic() - start)
            except _Retryable as exc:
                failure = exc
            if attempt > settings.retries:
                reason = f"{failure.reason} (gave up after {attempt} attempts)"
                break
            delay = backoff_delay(attempt, settings.backoff, settings.max_backoff, self.rng)
            if failure.retry_after is not None:
                if failure.retry_after > settings.max_backoff:
                    reason = (f"{failure.reason}: Retry-After {failure.retry_after:g}s is longer than "
                              f"download.max_backoff; re-run later")
                    break
                delay = max(delay, failure.retry_after)
            await asyncio.sleep(delay)
        return Fetched("failed", reason, failure.http_status, url, None, attempt, time.monotonic() - start)

    async def _attempt(self, url: str) -> Fetched:
        """One GET (``attempts``/``seconds`` left for :meth:`fetch` to fill), or raise :class:`_Retryable`."""
        await self.limiter.wait()
        try:
            async with self.session.get(url, allow_redirects=True, max_redirects=5) as resp:
                final_url = str(resp.url)
                if resp.status in FINAL_HTTP:
                    return _answer(FINAL_HTTP[resp.status], f"HTTP {resp.status}", resp.status, final_url)
                if resp.status == 429 or resp.status >= 500:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    raise _Retryable(f"HTTP {resp.status}", resp.status, retry_after)
                if resp.status != 200:
                    return _answer("failed", f"HTTP {resp.status}", resp.status, final_url)
                body = await self._read_capped(resp)
                if body is None:
                    reason = f"body over download.max_bytes ({self.settings.max_bytes})"
                    return _answer("too_large", reason, resp.status, final_url)
                return _answer("", "", resp.status, final_url, body)
        except (aiohttp.NonHttpUrlRedirectClientError, aiohttp.InvalidUrlClientError,
                aiohttp.InvalidUrlRedirectClientError) as exc:
            return _answer("bad_url", f"{type(exc).__name__}: {exc}", 0, url)
        except aiohttp.TooManyRedirects:
            return _answer("failed", "too many redirects", 0, url)
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:  # resets, cut bodies, garbled responses
            raise _Retryable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes | None:
        """The body, or None as soon as it is known to exceed ``max_bytes`` (never buffering more)."""
        cap = self.settings.max_bytes
        if resp.content_length is not None and resp.content_length > cap:
            return None
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
