"""The one HTTP policy, shared by both clients: the metadata stage's big-file transfer (``requests``, one
resumable file at a time) and the download stage's image client (``aiohttp``, hundreds in flight).

It decides which answers are worth another attempt (:data:`RETRY_STATUSES`; :data:`FINAL_STATUSES` are
answers about the file), how long to wait (exponential backoff with equal jitter, ``Retry-After`` honoured
up to ``max_backoff``), who we are (:data:`USER_AGENT`), and how long and how big a transfer may be
(timeouts, a minimum-progress rule, a total ``deadline``, ``max_bytes``). :class:`Attempts` is the
bookkeeping of one transfer; each client asks it what to do after a failure. The rules in full:
docs/architecture.md ("One HTTP policy").
"""
from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC

from pipeline import __version__
from pipeline.core.base.params import RuntimeParams

#: transient answers worth another attempt
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: answers about the file itself: recorded under these names, never retried
FINAL_STATUSES = {403: "forbidden", 404: "not_found", 410: "gone"}
USER_AGENT = f"openimages-pipeline/{__version__} (dataset builder; rate-limited, retries with backoff)"
#: redirects followed at most (a loop ends here)
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class HttpPolicy:
    """Timeouts, retries, deadline and size cap of one kind of transfer. The values, and their defaults,
    live once in params.yaml's ``runtime`` section and the stage's ``max_bytes``; this is their bundle."""

    connect_timeout: float
    read_timeout: float
    #: bytes/s below which an attempt is cut, judged over ``stall_window`` seconds (0 = no such rule)
    min_speed: float
    stall_window: float
    #: seconds one transfer may take in all, attempts and waits included
    deadline: float
    #: attempts after the first for transient failures (an attempt that made progress does not count)
    retries: int
    backoff: float
    max_backoff: float
    max_bytes: int

    @classmethod
    def for_images(cls, runtime: RuntimeParams, max_bytes: int) -> HttpPolicy:
        return cls._from(runtime, runtime.image_deadline, max_bytes)

    @classmethod
    def for_metadata(cls, runtime: RuntimeParams, max_bytes: int) -> HttpPolicy:
        return cls._from(runtime, runtime.metadata_deadline, max_bytes)

    @classmethod
    def _from(cls, r: RuntimeParams, deadline: float, max_bytes: int) -> HttpPolicy:
        return cls(r.connect_timeout, r.read_timeout, r.min_speed, r.stall_window, deadline, r.retries, r.backoff,
                   r.max_backoff, max_bytes)


def is_retryable(status: int) -> bool:
    return status in RETRY_STATUSES


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half of ``min(cap, base * 2**(failures-1))`` fixed, half random."""
    delay = min(cap, base * 2 ** (failures - 1))
    return delay / 2 + rng.uniform(0, delay / 2)


class GiveUp(Exception):
    """No more attempts: out of retries, past the deadline, or the server asked for too long a wait."""


@dataclass
class Attempts:
    """The retry bookkeeping of one transfer: attempts so far, failures in a row, the deadline."""

    policy: HttpPolicy
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic
    attempts: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        self.started = self.clock()

    def start(self) -> None:
        """Call before each attempt; raises :class:`GiveUp` once the deadline has passed."""
        if self.remaining() <= 0:
            raise GiveUp(f"took longer than the {self.policy.deadline:g} s deadline")
        self.attempts += 1

    def remaining(self) -> float:
        return self.policy.deadline - (self.clock() - self.started)

    def failed(self, reason: str, retry_after: float | None = None, progressed: bool = False) -> float:
        """Seconds to wait before the next attempt after a transient failure; :class:`GiveUp` when there is
        none. An attempt that ``progressed`` (a resumable body grew) resumes at once and is not counted."""
        self.failures = 0 if progressed else self.failures + 1
        if self.failures > self.policy.retries:
            raise GiveUp(f"{reason} (gave up after {self.attempts} attempts)")
        if retry_after is not None and retry_after > self.policy.max_backoff:
            raise GiveUp(f"{reason}: the server asks to wait {retry_after:g} s, longer than runtime.max_backoff "
                         f"({self.policy.max_backoff:g} s); re-run later")
        delay = 0.0 if progressed else backoff_delay(self.failures, self.policy.backoff, self.policy.max_backoff, self.rng)
        delay = max(delay, retry_after or 0.0)
        if delay >= self.remaining():
            raise GiveUp(f"{reason} (no time left before the {self.policy.deadline:g} s deadline)")
        return delay


class TooSlow(Exception):
    """The body arrives slower than the minimum-progress rule allows."""


class ProgressGuard:
    """The minimum-progress rule for one attempt's body: call :meth:`feed` with each chunk's size.

    Every ``stall_window`` seconds the bytes of that window are compared with ``min_speed * stall_window``;
    fewer raises :class:`TooSlow`. (A silent server is ``read_timeout``'s business; this catches the one that
    sends just enough to keep every read alive.)
    """

    def __init__(self, policy: HttpPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy, self.clock = policy, clock
        self.window_start, self.window_bytes = clock(), 0

    def feed(self, nbytes: int) -> None:
        self.window_bytes += nbytes
        now = self.clock()
        if now - self.window_start < self.policy.stall_window:
            return
        speed = self.window_bytes / (now - self.window_start)
        if self.policy.min_speed and speed < self.policy.min_speed:
            raise TooSlow(f"body arrived at {speed:,.0f} B/s, under runtime.min_speed={self.policy.min_speed:g}")
        self.window_start, self.window_bytes = now, 0
