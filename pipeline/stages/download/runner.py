"""Download one batch: ``run_batch(rows, settings, images) -> manifest part``, and :func:`batch_task`, the same as
a task of :mod:`pipeline.core.compute.engine` (this process, a local pool, or a Dask cluster).

``run_batch`` is a plain, picklable function of its inputs that returns an Arrow table, so any executor can
map it over batches. ``images`` is where the photos go: a store (:mod:`pipeline.core.compute.store`), a folder's
path or an object store's URL. Each finished image's record goes to ``on_record`` at once
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
from pipeline.core.compute.store import Store, store_at
from pipeline.core.net.http import HttpPolicy
from pipeline.core.net.rate import Board, RemoteBoard
from pipeline.stages.download.batches import Image, Record, journal_path, manifest_table
from pipeline.stages.download.client import Fetched, Fetcher
from pipeline.stages.download.ratelimit import RateLimiter
from pipeline.stages.download.verify import IMAGE_EXTENSIONS, Verdict, verify
from pipeline.stages.download.writer import Journal


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


def run_batch(rows: Sequence[Image], settings: BatchSettings, images_dir: Store | Path | str, journal: Path | None = None,
              *, limiter: RateLimiter | None = None, on_record: Callable[[Record], None] | None = None) -> pa.Table:
    """Download every image in ``rows`` into ``images_dir`` (a store, a folder or a URL); return their manifest rows.

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

        records = asyncio.run(_download(rows, settings, store_at(images_dir), limiter, finished))
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
    images: Store
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


async def _download(rows: Sequence[Image], settings: BatchSettings, photos: Store, limiter: RateLimiter,
                    finished: Callable[[Record], None]) -> list[Record]:
    records: list[Record] = []
    todo = iter(rows)

    async def worker(fetcher: Fetcher) -> None:
        for row in todo:  # one iterator shared by all workers: each row is taken exactly once
            record = await _one_image(row, fetcher, photos)
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


async def _one_image(row: Image, fetcher: Fetcher, photos: Store) -> Record:
    if not is_http_url(row.url):
        await asyncio.to_thread(_keep, photos, row.ImageID, None)
        return _record(row, Fetched(Download.BAD_URL, "not an http(s) URL", 0, "", None, 0), None)
    fetched = await fetcher.fetch(row.url)
    verdict = await asyncio.to_thread(_settle, row, fetched, photos)
    return _record(row, fetched, verdict)


def _settle(row: Image, fetched: Fetched, photos: Store) -> Verdict | None:
    """Verify the body (if any) and make the store match the record (:func:`_keep`)."""
    verdict = None if fetched.body is None else verify(
        fetched.body, fetched.final_url, row.OriginalMD5, row.OriginalSize)
    kept = verdict is not None and verdict.keep and fetched.body is not None
    _keep(photos, row.ImageID, (verdict.ext, verdict.md5, fetched.body) if kept else None)
    return verdict


def _keep(photos: Store, image_id: str, body: tuple[str, str, bytes] | None) -> None:
    """Put the photo's body (``(ext, md5, bytes)``; None: it has none worth keeping) under the name the store
    gives it, and leave no other file of this image that the store lets a run remove.

    In a folder, named ``<ImageID>.<ext>``, an earlier file of another extension (or of a photo now gone)
    goes, so the folder never holds a photo the manifest does not vouch for. In an object store, which other
    runs share, the name is the content's (:func:`pipeline.core.compute.store.photo_name`) and nothing is ever
    removed: the same name always holds the same bytes, so no run can overwrite or delete a photo another
    run's manifest vouches for."""
    name = None
    if body is not None:
        ext, md5, data = body
        name = photos.name_of(f"{image_id}.{ext}", md5)
        if name is not None:
            photos.put(name, data)
    photos.discard(f"{image_id}.{ext}" for ext in IMAGE_EXTENSIONS if f"{image_id}.{ext}" != name)


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
        "path": f"{row.ImageID}.{verdict.ext}" if verdict and verdict.keep else "",
        "bytes": len(body) if body is not None else 0,
        "md5": verdict.md5 if verdict else "",
        "attempts": fetched.attempts,
    }
