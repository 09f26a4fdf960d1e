"""The append-only journal of a batch: the progress that survives ``kill -9``.

Photos themselves go to the store (:mod:`pipeline.core.compute.store`): in a folder an image appears under its
real name only by ``os.replace`` of a complete temporary file, so a killed run leaves at worst a hidden
``.<ImageID>.<ext>.<pid>.tmp``, which the next run sweeps away. No fsync: ``kill -9`` ends the process, not
the kernel, so written pages still reach the disk; after a power cut a file could be short, which resume
catches by comparing its size with the recorded ``bytes``. Skipping fsync keeps writes cheap enough to run
at hundreds of images per second.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO


class Journal:
    """One JSON line per finished image, appended as it finishes: the progress a killed run keeps.

    A kill can cut the last line short; :func:`read_journal` skips such a line, and opening for append
    first ends it with a newline so the next record starts clean.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO | None = None

    def __enter__(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")
        if self._fh.tell() > 0 and _last_byte(self.path) != b"\n":
            self._fh.write(b"\n")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._fh is not None
        self._fh.close()

    def append(self, record: dict[str, Any]) -> None:
        assert self._fh is not None, "use Journal as a context manager"
        self._fh.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self._fh.flush()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The complete records in ``path`` (a line cut short by a kill is skipped)."""
    with open(path, "rb") as fh:
        return _records(fh)


def _records(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill (bad JSON or a split UTF-8 character)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class Journals:
    """The journals of a run's batches, written by the stage as the records come home from the workers
    (whichever process or machine fetched them): one open file per batch still running."""

    def __init__(self, path_of: Callable[[int], Path]) -> None:
        self.path_of = path_of
        self._open: dict[int, Journal] = {}

    def __enter__(self) -> Journals:
        return self

    def __exit__(self, *exc: object) -> None:
        for index in list(self._open):
            self.close(index)

    def append(self, index: int, record: dict[str, Any]) -> None:
        if index not in self._open:
            self._open[index] = Journal(self.path_of(index)).__enter__()
        self._open[index].append(record)

    def close(self, index: int) -> None:
        journal = self._open.pop(index, None)
        if journal is not None:
            journal.__exit__(None, None, None)
