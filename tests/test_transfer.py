"""Streamed downloads against the mirror over real HTTP: resume (Range/If-Range), size checks, retries."""
from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from pipeline.core.base.errors import PipelineFailure, UserError
from pipeline.core.base.params import DownloadParams, RuntimeParams
from pipeline.core.net.http import HttpPolicy
from pipeline.core.net.sources import join_url, layout
from pipeline.mirror import Mirror
from pipeline.stages.metadata.transfer import fetch


def policy_with(**changes: float) -> HttpPolicy:
    """The image policy of the default params, with ``changes`` (the defaults live in params, once)."""
    return replace(HttpPolicy.for_images(RuntimeParams(), DownloadParams().max_bytes), **changes)


FAST = policy_with(backoff=0.0, max_backoff=2.0, retries=3, max_bytes=16 << 30)  # Retry-After: 1 is honoured
BOXES = layout("v6").boxes["train"]


@pytest.fixture
def fresh(mirror: Mirror) -> Iterator[Mirror]:
    """The shared mirror with its once-only faults re-armed and its request log cleared, restored after."""
    mirror.reset_faults()
    mirror.clear_requests()
    yield mirror
    mirror.configure(metadata_truncate_once=False)
    mirror.reset_faults()


def served(mirror: Mirror, path: str) -> requests.Response:
    response = requests.get(join_url(mirror.base_url, path), timeout=10)
    response.raise_for_status()
    return response


def statuses(mirror: Mirror, path: str) -> list[int]:
    return [r.status for r in mirror.requests if r.path.endswith(path) and r.method == "GET"]


def original(mirror: Mirror, fault: str) -> str:
    return mirror.truth[mirror.truth.fault == fault].OriginalURL.iloc[0]


def test_a_download_cut_half_way_resumes_where_it_stopped(fresh: Mirror, tmp_path: Path) -> None:
    full = served(fresh, BOXES).content
    fresh.clear_requests()
    fresh.configure(metadata_truncate_once=True)
    dest = tmp_path / "boxes.csv"
    result = fetch(join_url(fresh.base_url, BOXES), dest, FAST, progress=False)
    assert dest.read_bytes() == full
    assert (result.bytes, result.attempts, result.resumed_from) == (len(full), 2, 0)
    assert statuses(fresh, BOXES) == [200, 206]
    cut = next(r for r in fresh.requests if r.path.endswith(BOXES))
    assert 0 < cut.nbytes < len(full)  # the first answer really was cut; the second sent only the rest
    assert fresh.requests[-1].nbytes == len(full) - cut.nbytes
    assert not dest.with_name("boxes.csv.part").exists() and not dest.with_name("boxes.csv.part.json").exists()


def _leave_partial(tmp_path: Path, url: str, data: bytes, validator: str) -> Path:
    """What a killed earlier run leaves: the first bytes in ``.part`` and the sidecar naming their source."""
    dest = tmp_path / "boxes.csv"
    dest.with_name("boxes.csv.part").write_bytes(data)
    dest.with_name("boxes.csv.part.json").write_text(json.dumps({"url": url, "validator": validator, "total": None}))
    return dest


def test_a_partial_file_from_an_earlier_run_is_resumed_with_if_range(fresh: Mirror, tmp_path: Path) -> None:
    response = served(fresh, BOXES)
    full, etag = response.content, response.headers["ETag"]
    url = join_url(fresh.base_url, BOXES)
    dest = _leave_partial(tmp_path, url, full[:1000], etag)
    fresh.clear_requests()
    result = fetch(url, dest, FAST, progress=False)
    assert dest.read_bytes() == full
    assert result.resumed_from == 1000
    assert statuses(fresh, BOXES) == [206]
    assert fresh.requests[-1].nbytes == len(full) - 1000


def test_a_partial_file_of_an_older_version_is_replaced_not_spliced(fresh: Mirror, tmp_path: Path) -> None:
    full = served(fresh, BOXES).content
    url = join_url(fresh.base_url, BOXES)
    dest = _leave_partial(tmp_path, url, b"X" * 1000, '"an-old-etag"')
    fresh.clear_requests()
    fetch(url, dest, FAST, progress=False)
    assert dest.read_bytes() == full
    assert statuses(fresh, BOXES) == [200]  # If-Range did not match: the server sent the whole new file


def test_a_partial_file_of_another_url_is_thrown_away(fresh: Mirror, tmp_path: Path) -> None:
    full = served(fresh, BOXES).content
    dest = _leave_partial(tmp_path, "http://elsewhere.example/boxes.csv", full[:1000], "")
    fresh.clear_requests()
    fetch(join_url(fresh.base_url, BOXES), dest, FAST, progress=False)
    assert dest.read_bytes() == full
    assert statuses(fresh, BOXES) == [200]


def test_a_complete_partial_file_is_not_fetched_again(fresh: Mirror, tmp_path: Path) -> None:
    response = served(fresh, BOXES)
    url = join_url(fresh.base_url, BOXES)
    dest = _leave_partial(tmp_path, url, response.content, response.headers["ETag"])
    meta = dest.with_name("boxes.csv.part.json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "total": len(response.content)}))
    fresh.clear_requests()
    result = fetch(url, dest, FAST, progress=False)
    assert dest.read_bytes() == response.content and result.bytes == len(response.content)
    assert statuses(fresh, BOXES) == [416]


@pytest.mark.parametrize("fault, expected", [("server_error", [500, 500, 200]), ("rate_limited", [429, 429, 200]),
                                             ("truncated", [200, 206])])
def test_transient_failures_are_retried(fresh: Mirror, tmp_path: Path, fault: str, expected: list[int]) -> None:
    url = original(fresh, fault)
    result = fetch(url, tmp_path / "photo", FAST, progress=False)
    assert statuses(fresh, url.split("/flickr/")[1]) == expected
    assert result.attempts == len(expected)
    assert (tmp_path / "photo").read_bytes() == requests.get(url, timeout=10).content


def test_a_missing_file_fails_at_once_with_one_line(fresh: Mirror, tmp_path: Path) -> None:
    url = join_url(fresh.base_url, "v9/no-such-file.csv")
    with pytest.raises(PipelineFailure, match=r"v9/no-such-file.csv: HTTP 404") as info:
        fetch(url, tmp_path / "x.csv", FAST, progress=False)
    assert "\n" not in str(info.value)
    assert len(statuses(fresh, "v9/no-such-file.csv")) == 1
    assert not list(tmp_path.iterdir())


def test_a_file_over_the_size_cap_is_refused(fresh: Mirror, tmp_path: Path) -> None:
    policy = policy_with(max_bytes=100)
    with pytest.raises(PipelineFailure, match="100-byte cap"):
        fetch(join_url(fresh.base_url, BOXES), tmp_path / "boxes.csv", policy, progress=False)
    assert not (tmp_path / "boxes.csv").exists()


def test_an_unreachable_server_gives_up_after_the_retries(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PipelineFailure, match="gave up after 4 attempts") as failed:
        fetch(f"http://127.0.0.1:{port}/x.csv", tmp_path / "x.csv", FAST, progress=False)
    assert "is the network up and source.base_url right?" in str(failed.value)  # what the user can check


def test_only_http_urls_are_fetched(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="must be an http"):
        fetch("file:///etc/passwd", tmp_path / "x", FAST, progress=False)
