"""Download one batch: ``run_batch(rows, settings, images) -> manifest part``, and :func:`batch_task`, the same as
a task of :mod:`pipeline.core.compute.engine` (this process, a local pool, or a Dask cluster).

``run_batch`` is a plain, picklable function of its inputs that returns an Arrow table, so any executor can
map it over batches. ``images`` is where the photos go: a folder (an absolute path, for workers elsewhere) or
an object store URL (:mod:`pipeline.core.compute.store`). Each finished image's record goes to ``on_record`` at once
(the engine sends it home, where the stage appends it to the batch's journal and moves the progress bar).

Inside a batch, ``settings.connections`` coroutines share one aiohttp session and one rate limiter, whose
board is shared by every batch of the run (:class:`BatchContext`). Hashing and writing run in a thread so
the event loop keeps other downloads moving meanwhile.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core.base.params import Params
from pipeline.core.base.redact import public_url
from pipeline.core.base.safe import is_http_url
from pipeline.core.base.status import Download
from pipeline.core.compute import store
from pipeline.core.net.http import HttpPolicy
from pipeline.core.net.rate import Board, RemoteBoard
from pipeline.stages.download.batches import Image, Record, journal_path, manifest_table
from pipeline.stages.download.client import Fetched, Fetcher
from pipeline.stages.download.ratelimit import RateLimiter
from pipeline.stages.download.verify import Verdict, verify
from pipeline.stages.download.writer import Journal, image_path, write_image


@dataclass(frozen=True)
class BatchSettings:
    """What a batch needs to know, picklable: the HTTP policy, the rate and the connections per process."""

    policy: HttpPolicy
    rate: float
    connections: int

    @classmethod
    def from_params(cls, params: Params) -> BatchSettings:
        return cls(HttpPolicy.for_images(params.runtime, params.download.max_bytes), params.download.rate,
                   params.runtime.connections)


def run_batch(rows: Sequence[Image], settings: BatchSettings, images_dir: Path | str, journal: Path | None = None, *,
              limiter: RateLimiter | None = None, on_record: Callable[[Record], None] | None = None) -> pa.Table:
    """Download every image in ``rows`` into ``images_dir`` (a folder or a store URL); return their manifest rows.

    Each finished image goes to ``on_record`` at once and, when ``journal`` is given, is appended to it, so
    a killed run loses nothing it finished. ``limiter`` lets batches share one rate; without one the batch
    has its own.
    """
    limiter = limiter or RateLimiter(settings.rate)
    with Journal(journal) if journal is not None else _NoJournal() as log:
        def finished(record: Record) -> None:
            log.append(record)
            if on_record is not None:
                on_record(record)

        records = asyncio.run(_download(rows, settings, str(images_dir), limiter, finished))
    return manifest_table(records)


class _NoJournal:
    def __enter__(self) -> _NoJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def append(self, record: Record) -> None:
        pass


@dataclass(frozen=True)
class BatchContext:
    """What every batch of a run shares: its settings, where the photos go, the rate's board (None when the
    rate is off; the machine's or the scheduler's, shared with other runs) and the folder of the journals
    when the workers reach it (None: the stage journals the records they send home)."""

    settings: BatchSettings
    images: str
    board: Board | RemoteBoard | None
    journals: str | None


def batch_task(context: BatchContext, job: tuple[int, Sequence[Image]], emit: Callable[[Any], None]) -> pa.Table:
    """One batch as a task of :class:`pipeline.core.compute.engine.Engine`: ``job`` is ``(batch index, rows)``; each
    record is emitted as ``{"batch": index, "record": record}``."""
    index, rows = job
    limiter = RateLimiter(context.settings.rate, context.board)
    journal = journal_path(Path(context.journals), index) if context.journals else None
    return run_batch(rows, context.settings, context.images, journal, limiter=limiter,
                     on_record=lambda record: emit({"batch": index, "record": record}))


async def _download(rows: Sequence[Image], settings: BatchSettings, images_dir: str, limiter: RateLimiter,
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


async def _one_image(row: Image, fetcher: Fetcher, images_dir: str) -> Record:
    if not is_http_url(row.url):
        if not store.is_remote(images_dir):
            await asyncio.to_thread(write_image, Path(images_dir), row.ImageID, None, None)
        return _record(row, Fetched(Download.BAD_URL, "not an http(s) URL", 0, "", None, 0), None)
    fetched = await fetcher.fetch(row.url)
    verdict = await asyncio.to_thread(_settle, row, fetched, images_dir)
    return _record(row, fetched, verdict)


def _settle(row: Image, fetched: Fetched, images_dir: str) -> Verdict | None:
    """Verify the body (if any) and make the folder match: the body under its name, or no file at all.

    In an object store, which other runs share, the body is put under its content's name
    (:func:`pipeline.core.compute.store.photo_name`) and nothing is ever removed: the same name always holds the same
    bytes, so no run can overwrite or delete a photo another run's manifest vouches for."""
    verdict = None if fetched.body is None else verify(
        fetched.body, fetched.final_url, row.OriginalMD5, row.OriginalSize)
    keep = verdict is not None and verdict.keep
    if store.is_remote(images_dir):
        name = store.photo_name(verdict.md5, verdict.ext) if keep else None
        if name:
            store.write_file(store.join(images_dir, name), fetched.body)
    else:
        write_image(Path(images_dir), row.ImageID, verdict.ext if keep else None, fetched.body if keep else None)
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
