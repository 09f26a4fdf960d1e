"""The download stage: selection -> distinct images -> batches -> ``data/images`` + manifest.

Each ImageID is fetched once however many of its boxes were selected. A re-run (after success, a crash
or ``kill -9``) skips every image whose answer is already recorded and fetches only the rest.

With ``runtime.store`` the photos go to ``<store>/images`` instead, named by their content, where other
workspaces' runs put theirs at the same time: this stage never removes anything there, and a re-run finds
what it has from its records and one listing (:mod:`pipeline.core.compute.store` argues the layout).
"""
from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core.base import paths
from pipeline.core.base.errors import PipelineFailure, UserError
from pipeline.core.base.io import read_table, sweep_temporaries
from pipeline.core.base.params import SUBSETS, Params, SourceParams
from pipeline.core.base.progress import Progress
from pipeline.core.base.safe import is_image_id
from pipeline.core.base.stages import Summary
from pipeline.core.compute import store
from pipeline.core.compute.engine import Engine, open_engine
from pipeline.core.compute.machine import processes
from pipeline.core.compute.store import Store, open_store, store_at
from pipeline.core.net.sources import join_url
from pipeline.stages.download import batches
from pipeline.stages.download import unlisted as aside
from pipeline.stages.download.batches import Image, Record
from pipeline.stages.download.collect import Plan, RecordCollector, Tried
from pipeline.stages.download.ratelimit import rate_key
from pipeline.stages.download.runner import BatchContext, BatchSettings, batch_task

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


@dataclass(frozen=True)
class DownloadSummary(Summary):
    """The manifest written: one row per image, its status and bytes."""

    manifest: pa.Table

    def lines(self) -> list[str]:
        return [summary_table(self.manifest)]


def run(params: Params) -> DownloadSummary:
    """The stage: every image of ``data/selected.parquet`` once into ``data/images``, with its manifest."""
    return DownloadSummary(download(params))


def download(params: Params, selected: Path = paths.SELECTED, images_dir: Path = paths.IMAGES_DIR,
             progress: bool = True) -> pa.Table:
    """Run the stage and return the manifest (also written to ``images_dir/manifest.parquet``).

    Raises :class:`PipelineFailure` when every request of this run ended ``failed`` (the server is
    unreachable, say), after writing the manifest: a run that merely found some photos gone is a success.
    """
    images, dropped = images_table(read_table(selected, "selection"), params.source)
    if dropped:
        print(f"warning: skipped {dropped} image(s) whose ImageID is not 16 hex digits", file=sys.stderr)
    batches_dir = batches.folder(images_dir)
    photos = open_store(params.runtime.store, store.IMAGES, images_dir)  # where the workers put them
    photos.check_writable()
    try:
        batches_dir.mkdir(parents=True, exist_ok=True)
        swept = sweep_temporaries(images_dir) + sweep_temporaries(batches_dir)
        if swept:
            print(f"removed {swept} partial file(s) left by an interrupted run", file=sys.stderr)
        # photos an earlier run set aside come back, with their records (only into a folder this workspace
        # owns: a shared store is never rearranged, and its names are contents; core/compute/store.py)
        restored = photos.in_own_folder(lambda folder: aside.restore(folder, (image.ImageID for image in images)))
        known = {**(restored or {}), **batches.load_records(batches_dir)}
        listed = photos.sizes()  # one listing says which recorded photos are still there, whole
        plan = [(batch, *_split_done(batch, known, photos, listed))
                for batch in batches.plan_batches(images, params.runtime.download_batch_size)]
        parts, tried = _run(plan, params, photos, batches_dir, progress)
        manifest = batches.finish(batches_dir, parts, images_dir / paths.IMAGES_MANIFEST.name)
        photos.in_own_folder(lambda folder: _tidy(folder, manifest, known))
    except OSError as exc:
        raise PipelineFailure(f"cannot write under {images_dir}: {exc}") from None
    if tried.all_failed:
        raise PipelineFailure(f"all {tried.requested} download(s) failed, e.g. {tried.first_failure}; "
                              "is the server reachable?")
    return manifest


def _run(plan: Plan, params: Params, photos: Store, batches_dir: Path, progress: bool) -> tuple[list[pa.Table], Tried]:
    """Fetch what each batch still needs; every batch's manifest part is written as soon as it is complete
    (:class:`~.collect.RecordCollector`). Returns the parts and the count of the images requested now."""
    total, done = sum(len(s.images) for s, _, _ in plan), sum(len(done) for _, done, _ in plan)
    journals = photos.journals_at(batches_dir)  # None: the workers may share no folder with us, we journal
    busy = sum(1 for _, _, rows in plan if rows)
    opened = open_engine(params.runtime, min(processes(params.runtime.download_processes), busy), "download",
                         "; run again to resume") if busy else nullcontext(None)  # nothing to fetch: no cluster
    with opened as engine, Progress(total, "download", "img", initial=done, enabled=progress) as bar, \
            RecordCollector(plan, batches_dir, bar, journal_here=journals is None) as collector:
        if engine is not None:
            _fetch(engine, collector.jobs(), BatchSettings.from_params(params), photos, journals,
                   collector.on_message, collector.on_result, params.runtime.rate_key)
    return collector.finished_parts(), collector.tried


def _fetch(engine: Engine, jobs: list[tuple[int, list[Image]]], settings: BatchSettings, images: Store | str,
           journals: Path | None, on_message: Callable[[Any], None],
           on_result: Callable[[int, pa.Table], None], board_name: str = "") -> list[pa.Table]:
    """Run the batches (``(index, rows)`` each) on ``engine``; return their tables in order. The workers
    journal each record in ``journals`` as it finishes (None: the caller journals the messages). ``images``:
    where the photos go (:func:`pipeline.core.compute.store.store_at`).
    ``board_name`` is ``runtime.rate_key`` (empty: the board of the images' server, :func:`.ratelimit.rate_key`).

    Locally in this process, or in a pool of ``runtime.download_processes`` (0 = one per usable core): a
    single event loop spends a whole core on 700 images/s, so a second one on a second core is what a higher
    rate needs. Or on a Dask cluster (``runtime.engine: dask``). Each batch is a task of its own, so a process
    that runs out of work takes the next batch, and every process asks the board the engine hands out for the
    key (this machine's, or the scheduler's: :meth:`~pipeline.core.compute.engine.Engine.rate_board`), which every
    other run with that key asks too, so the rate holds for all of them together.
    """
    urls = (image.url for _, rows in jobs for image in rows)
    boarded = engine.rate_board(rate_key(board_name, urls), settings.rate) if settings.rate else nullcontext(None)
    with boarded as board:
        context = BatchContext(settings, store_at(images), board, str(journals.absolute()) if journals else None)
        return engine.run(batch_task, context, jobs, on_message, on_result)


def _split_done(batch: batches.Batch, known: dict[str, Record], photos: Store,
                listed: dict[str, int]) -> tuple[list[Record], list[Image]]:
    """The batch's records a re-run keeps, and the images it still has to fetch (``listed``: the sizes of the
    files in ``photos``)."""
    done, todo = [], []
    for image in batch.images:
        record = known.get(image.ImageID)
        if batches.is_finished(record, image.url, photos, listed):
            done.append(record)
        else:
            todo.append(image)
    return done, todo


def _tidy(photos: Path, manifest: pa.Table, known: dict[str, Record]) -> None:
    """After every batch is done: remove the hidden temporary files killed workers left, and move the photos
    the manifest no longer lists out of the folder (:mod:`.aside`)."""
    sweep_temporaries(photos)
    moved = aside.set_aside(photos, manifest, known)
    if moved:
        print(f"moved {moved} photo(s) no longer selected to {aside.aside_dir(photos)} (a later run "
              "that selects them takes them back)", file=sys.stderr)


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
