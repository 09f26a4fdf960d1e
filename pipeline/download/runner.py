"""Download one shard: ``run_shard(rows, settings, images_dir, journal) -> manifest part``.

``run_shard`` is a plain, picklable function of its inputs that returns an Arrow table, so any executor can
map it over shards: the stage deals them to ``download.processes`` lanes (:func:`run_lane`, one after
another in each); Dask distributed (``client.map(run_shard, rows_per_shard, [settings] * n, [images_dir] * n,
journal_per_shard)``) could spread them over machines that share a file system (``tests/test_download.py``
maps it with a process pool). The rate limit is per process, so give each of N processes ``rate / N``.

Inside a shard, ``settings.workers`` coroutines share one aiohttp session and one rate limiter. Hashing
and writing run in a thread so the event loop keeps other downloads moving meanwhile.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.download.client import Fetched, Fetcher
from pipeline.download.ratelimit import RateLimiter
from pipeline.download.shards import Image, manifest_table
from pipeline.download.verify import Verdict, verify
from pipeline.download.writer import Journal, image_path, write_image
from pipeline.params import DownloadParams
from pipeline.safe import is_http_url

Record = dict[str, Any]


def run_shard(rows: Sequence[Image], settings: DownloadParams, images_dir: Path, journal: Path, *,
              limiter: RateLimiter | None = None, on_record: Callable[[Record], None] | None = None) -> pa.Table:
    """Download every image in ``rows`` and return their manifest rows.

    Each finished image is appended to ``journal`` at once, so a killed run loses nothing it finished.
    ``limiter`` lets consecutive shards share one rate.
    """
    limiter = limiter or RateLimiter(settings.rate)
    with Journal(journal) as log:
        def finished(record: Record) -> None:
            log.append(record)
            if on_record is not None:
                on_record(record)

        records = asyncio.run(_download(rows, settings, images_dir, limiter, finished))
    return manifest_table(records)


def run_lane(jobs: Sequence[tuple[Sequence[Image], Path]], settings: DownloadParams, images_dir: Path,
             limiter: RateLimiter, on_record: Callable[[Record], None] | None = None) -> list[pa.Table]:
    """Run shards (``(rows, journal)`` each) one after another under one limiter: the work of one process."""
    return [run_shard(rows, settings, images_dir, journal, limiter=limiter, on_record=on_record)
            for rows, journal in jobs]


def die_with_parent(parent: int) -> None:
    """Process-pool initializer: end this process when ``parent`` dies, even by ``kill -9``. Otherwise a lane
    would go on writing images and journals beside the re-run that the user starts next."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


async def _download(rows: Sequence[Image], settings: DownloadParams, images_dir: Path, limiter: RateLimiter,
                    finished: Callable[[Record], None]) -> list[Record]:
    records: list[Record] = []
    todo = iter(rows)

    async def worker(fetcher: Fetcher) -> None:
        for row in todo:  # one iterator shared by all workers: each row is taken exactly once
            record = await _one_image(row, fetcher, images_dir)
            records.append(record)
            finished(record)

    async with Fetcher.open_session(settings) as session:
        fetcher = Fetcher(session, limiter, settings)
        tasks = [asyncio.create_task(worker(fetcher)) for _ in range(min(settings.workers, len(rows)))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
    return records


async def _one_image(row: Image, fetcher: Fetcher, images_dir: Path) -> Record:
    if not is_http_url(row.url):
        await asyncio.to_thread(write_image, images_dir, row.ImageID, None, None)
        return _record(row, Fetched("bad_url", "not an http(s) URL", 0, "", None, 0, 0.0), None)
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
    """One manifest row (docs/architecture.md, "download")."""
    body = fetched.body
    return {
        "ImageID": row.ImageID,
        "Subset": row.Subset,
        "status": verdict.status if verdict else fetched.status,
        "reason": verdict.reason if verdict else fetched.reason,
        "http_status": fetched.http_status,
        "url": row.url,
        "final_url": fetched.final_url,
        "path": image_path(Path(), row.ImageID, verdict.ext).name if verdict and verdict.keep else "",
        "bytes": len(body) if body is not None else 0,
        "md5": verdict.md5 if verdict else "",
        "attempts": fetched.attempts,
        "seconds": round(fetched.seconds, 4),
    }
