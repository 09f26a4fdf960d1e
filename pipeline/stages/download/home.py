"""Where a run's records come home, whichever process or machine fetched them: parts, journals, the bar.

Workers send every finished image's record home as it finishes (through the engine: a pipe for a local
pool, Dask events from a cluster). Here each one is counted once on the one progress bar and, when the
workers cannot reach the journals themselves (photos in an object store: the workers may share no
folder), appended to its shard's journal, which is what a ``kill -9`` of this process or a lost scheduler
leaves for the re-run. A shard whose worker died runs again elsewhere and sends its records again: they
count once, and the shard's part holds each image once, from the shard's result, written the moment the
result arrives.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core.base.progress import Progress
from pipeline.stages.download import shards
from pipeline.stages.download.shards import Image
from pipeline.stages.download.writer import Journals

Record = dict[str, Any]
Plan = list[tuple[shards.Shard, list[Record], list[Image]]]


class Home:
    """``on_message`` and ``on_result`` for :meth:`pipeline.core.compute.engine.Engine.run` over a download plan
    (``(shard, records kept from earlier runs, images still to fetch)`` per shard, shard ``i`` at place ``i``)."""

    def __init__(self, plan: Plan, shards_dir: Path, bar: Progress, journal_here: bool) -> None:
        self.plan, self.shards_dir, self.bar, self.journal_here = plan, shards_dir, bar, journal_here
        self.counts: Counter[str] = Counter()
        self.parts: list[pa.Table | None] = [None] * len(plan)
        self.tried: list[Record] = []  # records of the images requested in this run
        self.todo = [shard.index for shard, _, rows in plan if rows]
        self.seen: dict[int, set[str]] = {index: set() for index in self.todo}
        self.journals = Journals(lambda index: shards.journal_path(shards_dir, index))
        for shard, done, rows in plan:
            if not rows:
                self._write_part(shard.index, done)

    def __enter__(self) -> Home:
        return self

    def __exit__(self, *exc: object) -> None:
        self.journals.__exit__()

    def jobs(self) -> list[tuple[int, list[Image]]]:
        """``(shard index, images to fetch)`` of each shard with work left, in plan order."""
        return [(index, self.plan[index][2]) for index in self.todo]

    def on_message(self, message: dict[str, Any]) -> None:
        index, record = message["shard"], message["record"]
        if index in self.seen and self.parts[index] is None:  # late messages of a finished shard add nothing
            if self.journal_here:
                self.journals.append(index, record)
            self._count(index, record)

    def on_result(self, job: int, table: pa.Table) -> None:
        index = self.todo[job]
        fresh = table.to_pylist()
        for record in fresh:  # any whose message did not arrive (yet)
            self._count(index, record)
        self._write_part(index, self.plan[index][1] + fresh)
        self.journals.close(index)
        self.tried.extend(record for record in fresh if record["attempts"] > 0)

    def finished_parts(self) -> list[pa.Table]:
        return [part for part in self.parts if part is not None]

    def _count(self, index: int, record: Record) -> None:
        if record["ImageID"] not in self.seen[index]:
            self.seen[index].add(record["ImageID"])
            self.counts[record["status"]] += 1
            self.bar.note(" ".join(f"{status}={n}" for status, n in self.counts.most_common()))
            self.bar.update()

    def _write_part(self, index: int, records: list[Record]) -> None:
        part = shards.manifest_table(records)
        shards.write_part(self.shards_dir, index, part)
        self.parts[index] = part
