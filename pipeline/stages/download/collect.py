"""Where a run's records come home, whichever process or machine fetched them: parts, journals, the bar.

Workers send every finished image's record home as it finishes (through the engine: a pipe for a local
pool, Dask events from a cluster). Here each one is counted once on the one progress bar and, when the
workers cannot reach the journals themselves (photos in an object store: the workers may share no
folder), appended to its batch's journal, which is what a ``kill -9`` of this process or a lost scheduler
leaves for the re-run. A batch whose worker died runs again elsewhere and sends its records again: they
count once, and the batch's part holds each image once, from the batch's result, written the moment the
result arrives.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core.base.progress import Progress
from pipeline.stages.download import batches
from pipeline.stages.download.batches import Image, Record
from pipeline.stages.download.writer import Journals

Plan = list[tuple[batches.Batch, list[Record], list[Image]]]


@dataclass
class Tried:
    """What the stage needs to know of this run's requests: how many, how many failed, the first failure.

    Counted as the batches finish instead of keeping every record: at 100k photos the list of records was
    ~95 MiB of the stage's 458 MiB peak (BENCHMARKS.md, "Cost as the work grows"), for one yes/no question.
    """

    requested: int = 0
    failed: int = 0
    first_failure: str = ""

    def add(self, record: Record) -> None:
        self.requested += 1
        if record["status"] == "failed":
            self.failed += 1
            self.first_failure = self.first_failure or str(record["reason"])

    @property
    def all_failed(self) -> bool:
        return self.requested > 0 and self.failed == self.requested


class RecordCollector:
    """``on_message`` and ``on_result`` for :meth:`pipeline.core.compute.engine.Engine.run` over a download plan
    (``(batch, records kept from earlier runs, images still to fetch)`` per batch, batch ``i`` at place ``i``)."""

    def __init__(self, plan: Plan, batches_dir: Path, bar: Progress, journal_here: bool) -> None:
        self.plan, self.batches_dir, self.bar, self.journal_here = plan, batches_dir, bar, journal_here
        self.counts: Counter[str] = Counter()
        self.parts: list[pa.Table | None] = [None] * len(plan)
        self.tried = Tried()  # the images requested in this run
        self.todo = [batch.index for batch, _, rows in plan if rows]
        self.seen: dict[int, set[str]] = {index: set() for index in self.todo}
        self.journals = Journals(lambda index: batches.journal_path(batches_dir, index))
        for batch, done, rows in plan:
            if not rows:
                self._write_part(batch.index, done)

    def __enter__(self) -> RecordCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.journals.__exit__()

    def jobs(self) -> list[tuple[int, list[Image]]]:
        """``(batch index, images to fetch)`` of each batch with work left, in plan order."""
        return [(index, self.plan[index][2]) for index in self.todo]

    def on_message(self, message: dict[str, Any]) -> None:
        index, record = message["batch"], message["record"]
        if index in self.seen and self.parts[index] is None:  # late messages of a finished batch add nothing
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
        for record in fresh:
            if record["attempts"] > 0:
                self.tried.add(record)

    def finished_parts(self) -> list[pa.Table]:
        return [part for part in self.parts if part is not None]

    def _count(self, index: int, record: Record) -> None:
        if record["ImageID"] not in self.seen[index]:
            self.seen[index].add(record["ImageID"])
            self.counts[record["status"]] += 1
            self.bar.note(" ".join(f"{status}={n}" for status, n in self.counts.most_common()))
            self.bar.update()

    def _write_part(self, index: int, records: list[Record]) -> None:
        part = batches.manifest_table(records)
        batches.write_part(self.batches_dir, index, part)
        self.parts[index] = part
