"""Download one shard: ``run_shard(rows, settings, images_dir, journal) -> manifest part``.

``run_shard`` is a plain, picklable function of its inputs that returns an Arrow table, so any executor can
map it over shards: the stage runs them in this process or hands them to a process pool whose workers
share one rate (:class:`~.ratelimit.SharedBoard`).

Inside a shard, ``settings.connections`` coroutines share one aiohttp session and one rate limiter. Hashing
and writing run in a thread so the event loop keeps other downloads moving meanwhile.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core.http import HttpPolicy
from pipeline.core.params import Params
from pipeline.core.safe import is_http_url, public_url
from pipeline.core.status import Download
from pipeline.stages.download.client import Fetched, Fetcher
from pipeline.stages.download.ratelimit import Board, RateLimiter
from pipeline.stages.download.shards import Image, manifest_table
from pipeline.stages.download.verify import Verdict, verify
from pipeline.stages.download.writer import Journal, image_path, write_image

Record = dict[str, Any]


@dataclass(frozen=True)
class ShardSettings:
    """What a shard needs to know, picklable: the HTTP policy, the rate and the connections per process."""

    policy: HttpPolicy
    rate: float
    connections: int

    @classmethod
    def from_params(cls, params: Params) -> ShardSettings:
        return cls(HttpPolicy.for_images(params), params.download.rate, params.runtime.connections)


def run_shard(rows: Sequence[Image], settings: ShardSettings, images_dir: Path, journal: Path, *,
              limiter: RateLimiter | None = None, on_record: Callable[[Record], None] | None = None) -> pa.Table:
    """Download every image in ``rows`` and return their manifest rows.

    Each finished image is appended to ``journal`` at once, so a killed run loses nothing it finished.
    ``limiter`` lets shards share one rate; without one the shard has its own.
    """
    limiter = limiter or RateLimiter(settings.rate)
    with Journal(journal) as log:
        def finished(record: Record) -> None:
            log.append(record)
            if on_record is not None:
                on_record(record)

        records = asyncio.run(_download(rows, settings, images_dir, limiter, finished))
    return manifest_table(records)


#: the limiter of a pool worker, made by :func:`init_worker` from the board the stage shares
_worker_limiter: RateLimiter | None = None


def init_worker(rate: float, board: Board) -> None:
    """Process-pool initializer: this worker's limiter asks the stage's shared board."""
    global _worker_limiter
    _worker_limiter = RateLimiter(rate, board)


def run_shard_in_worker(rows: Sequence[Image], settings: ShardSettings, images_dir: Path, journal: Path) -> pa.Table:
    """:func:`run_shard` in a pool worker, under the rate shared by every worker of the pool."""
    return run_shard(rows, settings, images_dir, journal, limiter=_worker_limiter)


async def _download(rows: Sequence[Image], settings: ShardSettings, images_dir: Path, limiter: RateLimiter,
                    finished: Callable[[Record], None]) -> list[Record]:
    records: list[Record] = []
    todo = iter(rows)

    async def worker(fetcher: Fetcher) -> None:
        for row in todo:  # one iterator shared by all workers: each row is taken exactly once
            record = await _one_image(row, fetcher, images_dir)
            records.append(record)
            finished(record)

    async with Fetcher.open_session(settings.policy, settings.connections) as session:
        fetcher = Fetcher(session, limiter, settings.policy)
        tasks = [asyncio.create_task(worker(fetcher)) for _ in range(min(settings.connections, len(rows)))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
    return records


async def _one_image(row: Image, fetcher: Fetcher, images_dir: Path) -> Record:
    if not is_http_url(row.url):
        await asyncio.to_thread(write_image, images_dir, row.ImageID, None, None)
        return _record(row, Fetched(Download.BAD_URL, "not an http(s) URL", 0, "", None, 0), None)
    fetched = await fetcher.fetch(row.url)
    verdict = await asyncio.to_thread(_settle, row, fetched, images_dir)
    return _record(row, fetched, verdict)


def _settle(row: Image, fetched: Fetched, images_dir: Path) -> Verdict | None:
    """Verify the body (if any) and make the folder match: the body under its name, or no file at all."""
    verdict = None if fetched.body is None else verify(
        fetched.body, fetched.final_url, row.OriginalMD5, row.OriginalSize)
    keep = verdict is not None and verdict.keep
    write_image(images_dir, row.ImageID, verdict.ext if keep else None, fetched.body if keep else None)
    return verdict


def _record(row: Image, fetched: Fetched, verdict: Verdict | None) -> Record:
    """One manifest row (docs/architecture.md, "download"); URLs without their credentials."""
    body = fetched.body
    return {
        "ImageID": row.ImageID,
        "Subset": row.Subset,
        "status": verdict.status if verdict else fetched.status,
        "reason": verdict.reason if verdict else fetched.reason,
        "http_status": fetched.http_status,
        "url": public_url(row.url),
        "final_url": public_url(fetched.final_url),
        "path": image_path(Path(), row.ImageID, verdict.ext).name if verdict and verdict.keep else "",
        "bytes": len(body) if body is not None else 0,
        "md5": verdict.md5 if verdict else "",
        "attempts": fetched.attempts,
    }
