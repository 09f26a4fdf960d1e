"""How a request log is judged: the most requests that arrived within any window of one second.

A server counting requests per second is what a politeness rate is promised to; the mirror logs each
request's arrival (:class:`~pipeline.mirror.server.RequestRecord`), and tests and benchmarks judge a rate by
this count. A closed window holds both of its ends, so ``rate + 1`` evenly spaced requests fit in one.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable


def max_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most of ``times`` (seconds) in any closed window of ``window`` seconds (0 for none)."""
    ordered = sorted(times)
    return max((bisect.bisect_right(ordered, t + window) - i for i, t in enumerate(ordered)), default=0)
