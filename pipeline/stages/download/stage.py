"""The download stage: selection -> distinct images -> shards -> ``data/images`` + manifest.

Each ImageID is fetched once however many of its boxes were selected. A re-run (after success, a crash
or ``kill -9``) skips every image whose answer is already recorded and fetches only the rest.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core import paths
from pipeline.core.errors import PipelineFailure, UserError
from pipeline.core.io import read_table, sweep_temporaries
from pipeline.core.locks import locked
from pipeline.core.machine import die_with_parent, processes
from pipeline.core.params import Params, SourceParams
from pipeline.core.progress import Progress
from pipeline.core.safe import is_image_id
from pipeline.core.sources import SUBSETS, join_url
from pipeline.stages.download import aside, shards
from pipeline.stages.download.ratelimit import RateLimiter, SharedBoard
from pipeline.stages.download.runner import Record, ShardSettings, init_worker, run_shard, run_shard_in_worker
from pipeline.stages.download.shards import Image
from pipeline.stages.download.writer import JournalTail

#: columns of ``data/selected.parquet`` this stage reads
NEEDED = ("ImageID", "Subset", "OriginalURL", "OriginalSize", "OriginalMD5")


def images_table(selected: pa.Table, source: SourceParams) -> tuple[list[Image], int]:
    """One :class:`Image` per distinct valid ImageID (the first of its rows), and how many distinct ImageIDs
    were dropped as invalid (they cannot name a file safely).

    ``flickr``: the original at OriginalURL, checked against OriginalSize/OriginalMD5. ``cvdf``: the
    resized copy at ``cvdf_url/<Subset>/<ImageID>.jpg``, which no size or md5 in the tables describes.
    Plain Python over Arrow columns: no pandas, whose import alone costs more than this whole function.
    """
    missing = [c for c in NEEDED if c not in selected.column_names]
    if missing:
        raise UserError(f"{paths.SELECTED}: missing column(s) {', '.join(missing)}; re-run the select stage")
    first: dict[Any, tuple] = {}
    for row in zip(*(selected.column(c).to_pylist() for c in NEEDED)):
        first.setdefault(row[0], row)
    images = [_image(*row, source) for image_id, row in first.items() if is_image_id(image_id)]
    return images, len(first) - len(images)


def _image(image_id: str, subset: str, original_url: Any, size: int | None, md5: str | None,
           source: SourceParams) -> Image:
    if source.images == "flickr":
        return Image(image_id, subset, original_url if isinstance(original_url, str) else "", size, md5)
    url = join_url(source.cvdf_url, f"{subset}/{image_id}.jpg") if subset in SUBSETS else ""
    return Image(image_id, subset, url, None, None)


@locked("download")
def download(params: Params, selected: Path = paths.SELECTED, images_dir: Path = paths.IMAGES_DIR,
             progress: bool = True) -> pa.Table:
    """Run the stage and return the manifest (also written to ``images_dir/manifest.parquet``).

    Raises :class:`PipelineFailure` when every request of this run ended ``failed`` (the server is
    unreachable, say), after writing the manifest: a run that merely found some photos gone is a success.
    """
    images, dropped = images_table(read_table(selected, "selection"), params.source)
    if dropped:
        print(f"warning: skipped {dropped} image(s) whose ImageID is not 16 hex digits", file=sys.stderr)
    shards_dir = images_dir / "shards"
    try:
        shards_dir.mkdir(parents=True, exist_ok=True)
        swept = sweep_temporaries(images_dir) + sweep_temporaries(shards_dir)
        if swept:
            print(f"removed {swept} partial file(s) left by an interrupted run", file=sys.stderr)
        known = {**aside.restore(images_dir, (image.ImageID for image in images)), **shards.load_records(shards_dir)}
        plan = [(shard, *_split_done(shard, known, images_dir))
                for shard in shards.plan_shards(images, params.runtime.shard_size)]
        parts, tried = _run(plan, params, images_dir, shards_dir, progress)
        manifest = shards.finish(shards_dir, parts, images_dir / paths.IMAGES_MANIFEST.name)
        moved = aside.set_aside(images_dir, manifest, known)
        if moved:
            print(f"moved {moved} photo(s) no longer selected to {aside.aside_dir(images_dir)} (a later run that "
                  "selects them takes them back)", file=sys.stderr)
    except OSError as exc:
        raise PipelineFailure(f"cannot write under {images_dir}: {exc}") from None
    if tried and all(record["status"] == "failed" for record in tried):
        raise PipelineFailure(f"all {len(tried)} download(s) failed, e.g. {tried[0]['reason']}; "
                              "is the server reachable?")
    return manifest


def _run(plan: list[tuple[shards.Shard, list[Record], list[Image]]], params: Params, images_dir: Path,
         shards_dir: Path, progress: bool) -> tuple[list[pa.Table], list[Record]]:
    """Fetch what each shard still needs and write every shard's manifest part.

    Returns the parts and the records of the images requested now.
    """
    counts: Counter[str] = Counter()
    parts, tried = [], []
    total, done = sum(len(s.images) for s, _, _ in plan), sum(len(done) for _, done, _ in plan)
    with Progress(total, "download", "img", initial=done, enabled=progress) as bar:
        def on_record(record: Record) -> None:
            counts[record["status"]] += 1
            bar.note(_brief(counts))
            bar.update()

        jobs = [(todo, shards.journal_path(shards_dir, shard.index)) for shard, _, todo in plan if todo]
        fetched = iter(_fetch(jobs, ShardSettings.from_params(params), params.runtime.download_processes,
                              images_dir, on_record))
        for shard, done_records, todo in plan:
            fresh = next(fetched).to_pylist() if todo else []
            part = shards.manifest_table(done_records + fresh)
            shards.write_part(shards_dir, shard.index, part)
            parts.append(part)
            tried += [record for record in fresh if record["attempts"] > 0]
    return parts, tried


def _fetch(jobs: list[tuple[list[Image], Path]], settings: ShardSettings, requested_processes: int,
           images_dir: Path, on_record: Callable[[Record], None]) -> list[pa.Table]:
    """Run the shards (``(rows, journal)`` each) and return their tables in the same order.

    In this process, or in a pool of ``runtime.download_processes`` (0 = one per usable core): a single event
    loop spends a whole core on 700 images/s, so a second one on a second core is what a higher rate needs.
    Each shard is a task of its own, so a process that runs out of work takes the next shard, and every
    process asks one shared board for its slots, so the rate holds for the pool as a whole. Records of other
    processes reach ``on_record`` by reading their journals every 0.2 s.
    """
    workers = min(processes(requested_processes), len(jobs))
    if workers <= 1:
        limiter = RateLimiter(settings.rate)
        return [run_shard(rows, settings, images_dir, journal, limiter=limiter, on_record=on_record)
                for rows, journal in jobs]
    tail = JournalTail(journal for _, journal in jobs)
    board = SharedBoard()
    initargs = (os.getpid(), settings.rate, board)
    with ProcessPoolExecutor(workers, initializer=_init_pool_worker, initargs=initargs) as pool:
        futures = [pool.submit(run_shard_in_worker, rows, settings, images_dir, journal) for rows, journal in jobs]
        while wait(futures, timeout=0.2).not_done:
            for record in tail.read():
                on_record(record)
        for record in tail.read():
            on_record(record)
        try:
            return [future.result() for future in futures]
        except BrokenProcessPool:
            raise PipelineFailure("a download process died (out of memory?); run again to resume") from None


def _init_pool_worker(parent: int, rate: float, board: SharedBoard) -> None:
    die_with_parent(parent)
    init_worker(rate, board)


def _split_done(shard: shards.Shard, known: dict[str, Record], images_dir: Path) -> tuple[list[Record], list[Image]]:
    """The shard's records a re-run keeps, and the images it still has to fetch."""
    done, todo = [], []
    for image in shard.images:
        record = known.get(image.ImageID)
        if shards.is_finished(record, image.url, images_dir):
            done.append(record)
        else:
            todo.append(image)
    return done, todo


def _brief(counts: Counter[str]) -> str:
    return " ".join(f"{status}={n}" for status, n in counts.most_common())


def summary_table(manifest: pa.Table) -> str:
    """Images and megabytes by status, largest first, with a total line."""
    if not len(manifest):
        return "no images selected"
    images: Counter[str] = Counter()
    size: Counter[str] = Counter()
    for status, nbytes in zip(manifest.column("status").to_pylist(), manifest.column("bytes").to_pylist()):
        images[status] += 1
        size[status] += nbytes
    total = len(manifest)
    lines = [f"{'status':<12}{'images':>9}{'share':>8}{'MB':>10}"]
    for status in sorted(images, key=lambda s: (-images[s], -size[s], s)):
        lines.append(f"{status:<12}{images[status]:>9}{images[status] / total:>8.1%}{size[status] / 1e6:>10.1f}")
    lines.append(f"{'total':<12}{total:>9}{1:>8.1%}{sum(size.values()) / 1e6:>10.1f}")
    return "\n".join(lines)
