"""Batches: slices of the image list, each with its own manifest part, and what a re-run may skip.

A batch is the unit of progress that survives between runs and the unit a distributed engine would hand
to a worker. Images are sorted by ImageID before slicing, so the plan is the same on every run with the
same selection, and labels are spread evenly over batches (ImageIDs are random hex).

Progress is recorded twice: per image in ``part-NNNNN.jsonl`` journals while a batch runs (what a
``kill -9`` keeps), and per batch in ``part-NNNNN.parquet`` when it ends. :func:`load_records` reads both,
so a re-run knows every image that was finished, whichever of the two holds it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.base.io import write_parquet
from pipeline.core.base.manifests import IMAGES_SCHEMA
from pipeline.core.base.redact import public_url
from pipeline.core.base.status import KEPT_ON_DISK, RETRIED_ON_RERUN
from pipeline.core.compute.store import Store
from pipeline.stages.download.verify import IMAGE_EXTENSIONS
from pipeline.stages.download.writer import read_journal

#: one row of the download manifest (``manifests.IMAGES_SCHEMA``'s columns), as journals and batches hold it
Record = dict[str, Any]

_PART = re.compile(r"^part-(\d{5,})\.(parquet|jsonl)$")


class Image(NamedTuple):
    """One image to fetch. ``ImageID`` is validated; ``OriginalSize``/``OriginalMD5`` are None when there is
    nothing to compare (cvdf copies, or empty in the table)."""

    ImageID: str
    Subset: str
    url: str
    OriginalSize: int | None
    OriginalMD5: str | None


@dataclass(frozen=True)
class Batch:
    """The ``index``-th slice of the image list."""

    index: int
    images: list[Image]


def plan_batches(images: list[Image], size: int) -> list[Batch]:
    """Slices of ``size`` images (``runtime.download_batch_size``), in ImageID order."""
    images = sorted(images, key=lambda image: image.ImageID)
    return [Batch(i, images[start:start + size]) for i, start in enumerate(range(0, len(images), size))]


def folder(images_dir: Path) -> Path:
    """``<images>/batches``, where the parts and journals live; a folder an older version named ``shards`` is
    taken over (renamed), so its records still spare a re-run the requests."""
    batches_dir, old = images_dir / "batches", images_dir / "shards"
    if old.is_dir() and not batches_dir.exists():
        old.rename(batches_dir)
    return batches_dir


def part_path(batches_dir: Path, index: int) -> Path:
    return batches_dir / f"part-{index:05d}.parquet"


def journal_path(batches_dir: Path, index: int) -> Path:
    return batches_dir / f"part-{index:05d}.jsonl"


def manifest_table(records: list[dict[str, Any]]) -> pa.Table:
    """Records as a manifest table with the contract's columns and types, in ImageID order."""
    return pa.Table.from_pylist(sorted(records, key=itemgetter("ImageID")), schema=IMAGES_SCHEMA)


def load_records(batches_dir: Path) -> dict[str, dict[str, Any]]:
    """Every image record in the folder's parts and journals, by ImageID.

    Journals are read after parts (a journal only exists for a batch that was still running, so it is
    the newer of the two), and oldest journal first.
    """
    records: dict[str, dict[str, Any]] = {}
    if not batches_dir.is_dir():
        return records
    parts = sorted(p for p in batches_dir.iterdir() if _PART.match(p.name))
    for path in [p for p in parts if p.suffix == ".parquet"]:
        for record in pq.read_table(path).to_pylist():
            records[record["ImageID"]] = record
    for path in sorted((p for p in parts if p.suffix == ".jsonl"), key=lambda p: p.stat().st_mtime):
        for record in read_journal(path):
            if isinstance(record.get("ImageID"), str):
                records[record["ImageID"]] = record
    return records


def is_finished(record: dict[str, Any] | None, url: str, photos: Store, listed: dict[str, int]) -> bool:
    """May a re-run skip this image? Only when its answer was final, for the same URL (as recorded: without credentials), and any kept
    file is still in ``photos`` (``listed``: their sizes, one listing) with the recorded size (a short file after a power cut is
    fetched again)."""
    if record is None or record.get("url") != public_url(url) or record.get("status") in RETRIED_ON_RERUN:
        return False
    if record.get("status") not in KEPT_ON_DISK:
        return True
    path = record.get("path")
    if path not in {f"{record['ImageID']}.{ext}" for ext in IMAGE_EXTENSIONS}:  # a doctored record names no other file
        return False
    name = photos.name_of(path, record.get("md5"))  # by ImageID in a folder, by content in an object store
    return name is not None and listed.get(name) == record.get("bytes")


def write_part(batches_dir: Path, index: int, part: pa.Table) -> Path:
    return write_parquet(part, part_path(batches_dir, index))


def finish(batches_dir: Path, parts: list[pa.Table], manifest_path: Path) -> pa.Table:
    """Merge the parts into the manifest, then drop journals and parts left from other plans.

    The order matters for ``kill -9``: the journals go only after the manifest (and every part) is on disk.
    """
    manifest = pa.concat_tables(parts) if parts else manifest_table([])
    write_parquet(manifest, manifest_path)
    for path in batches_dir.iterdir():
        match = _PART.match(path.name)
        if match and (path.suffix == ".jsonl" or int(match.group(1)) >= len(parts)):
            path.unlink()
    return manifest
