"""The one HTTP policy (pipeline.core.net.http), and both clients following it against a real server on 127.0.0.1:
the same statuses retried, Retry-After in both forms, one user agent, a total deadline and a minimum-progress
rule that stops a server dripping bytes."""
from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hostile import HostileServer, serving

from pipeline.core.base.errors import PipelineFailure
from pipeline.core.base.params import DownloadParams, RuntimeParams
from pipeline.core.net.http import (
    RETRY_STATUSES,
    USER_AGENT,
    Attempts,
    GiveUp,
    HttpPolicy,
    ProgressGuard,
    TooSlow,
    backoff_delay,
    parse_retry_after,
)
from pipeline.stages.download.client import Fetcher
from pipeline.stages.download.ratelimit import RateLimiter
from pipeline.stages.metadata.transfer import fetch


def policy_with(**changes: float) -> HttpPolicy:
    """The image policy of the default params, with ``changes`` (the defaults live in params, once)."""
    return replace(HttpPolicy.for_images(RuntimeParams(), DownloadParams().max_bytes), **changes)



class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412500.0) == 0.0  # already past
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None and parse_retry_after("") is None


def test_backoff_doubles_with_equal_jitter_and_a_cap() -> None:
    rng = random.Random(0)
    first = [backoff_delay(1, 1.0, 60.0, rng) for _ in range(200)]
    assert 0.5 <= min(first) and max(first) <= 1.0 and len(set(first)) > 100  # jittered
    assert all(2.0 <= backoff_delay(3, 1.0, 60.0, rng) <= 4.0 for _ in range(50))  # doubled twice
    assert all(30.0 <= backoff_delay(20, 1.0, 60.0, rng) <= 60.0 for _ in range(50))  # capped


def test_attempts_count_failures_honour_retry_after_and_stop_at_the_deadline() -> None:
    clock = FakeClock()
    tries = Attempts(policy_with(retries=2, backoff=1.0, max_backoff=10.0, deadline=30.0), random.Random(0), clock)
    tries.start()
    assert tries.failed("HTTP 503", retry_after=5.0) == 5.0  # the server's wish beats a shorter backoff
    assert tries.failed("reset", progressed=True) == 0.0     # a resumable body grew: at once, not counted
    tries.failed("reset")
    tries.failed("reset")
    with pytest.raises(GiveUp, match="gave up after 1 attempts"):
        tries.failed("reset")                                # the third failure in a row
    tries = Attempts(policy_with(max_backoff=10.0), random.Random(0), clock)
    with pytest.raises(GiveUp, match="asks to wait 120 s"):
        tries.failed("HTTP 429", retry_after=120.0)
    tries = Attempts(policy_with(deadline=30.0), random.Random(0), clock)
    clock.now += 31.0
    with pytest.raises(GiveUp, match="30 s deadline"):
        tries.start()


def test_the_minimum_progress_rule_cuts_a_drip_but_not_a_burst_of_silence() -> None:
    clock = FakeClock()
    guard = ProgressGuard(policy_with(min_speed=1000.0, stall_window=10.0), clock)
    for _ in range(9):  # 1 byte a second for nine seconds: judged only once the window is full
        clock.now += 1.0
        guard.feed(1)
    clock.now += 1.0
    with pytest.raises(TooSlow, match="under runtime.min_speed=1000"):
        guard.feed(1)
    guard = ProgressGuard(policy_with(min_speed=1000.0, stall_window=10.0), clock)
    clock.now += 10.0
    guard.feed(50_000)  # a quiet start, then the bytes: 5 kB/s over the window is fine
    clock.now += 10.0
    guard.feed(20_000)


BODY = b"\xff\xd8\xff" + b"data" * 100


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with serving({}) as server:
        server.drip("/drip", length=100_000, every=0.05)  # a byte every 50 ms: never idle long, never done
        yield server


QUICK = policy_with(retries=3, backoff=0.01, max_backoff=1.0, read_timeout=5.0, deadline=20.0)


def image(url: str, policy: HttpPolicy = QUICK):
    async def go():
        async with Fetcher.open_session(policy, 4) as session:
            return await Fetcher(session, RateLimiter(0), policy).fetch(url)
    return asyncio.run(go())


@pytest.mark.parametrize("status", sorted(RETRY_STATUSES))
def test_both_clients_retry_the_same_statuses_and_send_one_user_agent(hostile: HostileServer, tmp_path: Path,
                                                                      status: int) -> None:
    for path in (f"/status/{status}/image", f"/status/{status}/file"):
        hostile.serve(path, BODY)
        hostile.first(path, status, {"Retry-After": "0"} if status in (429, 503) else {})
    got = image(hostile.url(f"/status/{status}/image"))
    assert got.status == "" and got.attempts == 2 and got.body.startswith(b"\xff\xd8\xff")
    result = fetch(hostile.url(f"/status/{status}/file"), tmp_path / "file", QUICK, progress=False)
    assert result.attempts == 2 and (tmp_path / "file").read_bytes().startswith(b"\xff\xd8\xff")
    assert set(hostile.agents[-4:]) == {USER_AGENT}


def test_a_status_outside_the_policy_is_not_retried_by_either_client(hostile: HostileServer, tmp_path: Path) -> None:
    for path in ("/status/501/image", "/status/501/file"):
        hostile.serve(path, BODY)
        hostile.first(path, 501)
    got = image(hostile.url("/status/501/image"))
    assert got.status == "failed" and got.attempts == 1
    with pytest.raises(PipelineFailure, match="HTTP 501"):
        fetch(hostile.url("/status/501/file"), tmp_path / "file", QUICK, progress=False)


def test_retry_after_as_a_date_in_the_past_means_now(hostile: HostileServer, tmp_path: Path) -> None:
    hostile.serve("/date-retry", BODY)
    hostile.first("/date-retry", 503, {"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"})
    result = fetch(hostile.url("/date-retry"), tmp_path / "file", QUICK, progress=False)
    assert result.attempts == 2


def test_a_dripping_server_is_cut_by_both_clients(hostile: HostileServer, tmp_path: Path) -> None:
    policy = policy_with(retries=1, backoff=0.01, max_backoff=1.0, read_timeout=5.0, min_speed=1000.0,
                        stall_window=0.5, deadline=60.0)
    hits = hostile.hits.get("/drip", 0)
    got = image(hostile.url("/drip"), policy)
    assert got.status == "failed" and "min_speed" in got.reason and got.attempts == 2
    with pytest.raises(PipelineFailure, match="min_speed"):
        fetch(hostile.url("/drip"), tmp_path / "drip.csv", policy, progress=False)
    assert not (tmp_path / "drip.csv").exists()
    assert hostile.hits["/drip"] - hits == 4  # two cut attempts each: the rule, not the test's timeout, ended them


def test_the_deadline_ends_a_transfer_that_keeps_being_cut(hostile: HostileServer, tmp_path: Path) -> None:
    policy = policy_with(retries=100, backoff=0.01, max_backoff=0.05, read_timeout=5.0, min_speed=1000.0,
                        stall_window=0.3, deadline=1.0)
    got = image(hostile.url("/drip"), policy)
    assert got.status == "failed" and "deadline" in got.reason
    with pytest.raises(PipelineFailure, match="deadline"):
        fetch(hostile.url("/drip"), tmp_path / "drip.csv", policy, progress=False)
