"""The HTTP side of a download: one GET at a time per worker, under the one HTTP policy.

asyncio + aiohttp rather than a thread pool of ``requests``: on this project's 2-core machines a thread pool
tops out near 220 images/s (the GIL), while one event loop keeps hundreds of requests in flight. What is
retried, how long to wait, the deadline, the minimum-progress rule, the size cap and the user agent come
from :mod:`pipeline.core.net.http`; 403/404/410 are answers about the photo, recorded and never retried.
Every attempt, retries included, waits for the shared :class:`~.ratelimit.RateLimiter`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import random
from dataclasses import dataclass

import aiohttp

from pipeline.core.base.safe import is_http_url
from pipeline.core.base.status import Download
from pipeline.core.net.http import (
    FINAL_STATUSES,
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
from pipeline.stages.download.ratelimit import RateLimiter

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


def _answer(status: str, reason: str, http_status: int, final_url: str, body: bytes | None = None) -> Fetched:
    return Fetched(status, reason, http_status, final_url, body, attempts=0)


class _Retryable(Exception):
    """A transient failure worth another attempt; ``retry_after`` is the server's wish, in seconds."""

    def __init__(self, reason: str, http_status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.http_status, self.retry_after = reason, http_status, retry_after


class Fetcher:
    """Fetches URLs over one aiohttp session, sharing one :class:`RateLimiter` between all callers."""

    def __init__(self, session: aiohttp.ClientSession, limiter: RateLimiter, policy: HttpPolicy,
                 rng: random.Random | None = None) -> None:
        self.session, self.limiter, self.policy = session, limiter, policy
        self.rng = rng or random.Random()

    @staticmethod
    def open_session(policy: HttpPolicy, connections: int) -> aiohttp.ClientSession:
        """A session for ``connections`` concurrent requests with the policy's connect and read timeouts (the
        deadline is set per request: it is what is left of the image's)."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.connect_timeout, sock_read=policy.read_timeout)
        connector = aiohttp.TCPConnector(limit=connections, ttl_dns_cache=300)
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        return aiohttp.ClientSession(timeout=timeout, connector=connector, headers=headers)

    async def fetch(self, url: str) -> Fetched:
        """GET ``url`` with retries; never raises for network or HTTP trouble (it is in the result)."""
        tries = Attempts(self.policy, self.rng)
        failure = _Retryable("no attempt")
        while True:
            try:
                tries.start()
                result = await self._attempt(url, tries)
                return dataclasses.replace(result, attempts=tries.attempts)
            except _Retryable as exc:
                failure = exc
            except GiveUp as stop:
                reason = str(stop)
                break
            try:
                await asyncio.sleep(tries.failed(failure.reason, failure.retry_after))
            except GiveUp as stop:
                reason = str(stop)
                break
        return Fetched(Download.FAILED, reason, failure.http_status, url, None, tries.attempts)

    async def _attempt(self, url: str, tries: Attempts) -> Fetched:
        """One GET (``attempts`` left for :meth:`fetch` to fill), or raise :class:`_Retryable`."""
        await self.limiter.wait()
        timeout = aiohttp.ClientTimeout(total=max(tries.remaining(), 0.001), sock_connect=self.policy.connect_timeout,
                                        sock_read=self.policy.read_timeout)
        try:
            async with self.session.get(url, allow_redirects=True, max_redirects=MAX_REDIRECTS, timeout=timeout) as resp:
                final_url = str(resp.url)
                if not is_http_url(final_url):
                    return _answer(Download.BAD_URL, "redirected to a URL that is not http(s)", resp.status, final_url)
                if resp.status in FINAL_STATUSES:
                    return _answer(FINAL_STATUSES[resp.status], f"HTTP {resp.status}", resp.status, final_url)
                if is_retryable(resp.status):
                    raise _Retryable(f"HTTP {resp.status}", resp.status, parse_retry_after(resp.headers.get("Retry-After")))
                if resp.status != 200:
                    return _answer(Download.FAILED, f"HTTP {resp.status}", resp.status, final_url)
                body = await self._read_capped(resp)
                if body is None:
                    reason = f"body over download.max_bytes ({self.policy.max_bytes})"
                    return _answer(Download.TOO_LARGE, reason, resp.status, final_url)
                return _answer("", "", resp.status, final_url, body)
        except (aiohttp.NonHttpUrlRedirectClientError, aiohttp.InvalidUrlClientError,
                aiohttp.InvalidUrlRedirectClientError) as exc:
            return _answer(Download.BAD_URL, f"{type(exc).__name__}: {exc}", 0, url)
        except aiohttp.TooManyRedirects:
            return _answer(Download.FAILED, f"more than {MAX_REDIRECTS} redirects", 0, url)
        except TooSlow as exc:
            raise _Retryable(str(exc)) from None
        except TimeoutError:
            if tries.remaining() <= 0:
                raise GiveUp(f"took longer than the {self.policy.deadline:g} s deadline (runtime.image_deadline)") from None
            raise _Retryable(f"no answer for {self.policy.read_timeout:g} s (runtime.read_timeout)") from None
        except aiohttp.ClientError as exc:  # resets, cut bodies, garbled responses
            raise _Retryable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes | None:
        """The body, or None as soon as it is known to exceed ``max_bytes`` (never buffering more)."""
        cap = self.policy.max_bytes
        if resp.content_length is not None and resp.content_length > cap:
            return None
        guard = ProgressGuard(self.policy)
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
            guard.feed(len(chunk))
        return b"".join(chunks)

