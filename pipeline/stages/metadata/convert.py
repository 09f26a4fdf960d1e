"""Open Images CSVs -> the Parquet cache, streamed so memory stays bounded.

The CSVs are read in blocks with explicit column types and written as ``boxes/`` (one Parquet file per
LabelName, hive layout, one row group per flush of :data:`FLUSH_ROWS`), ``images.parquet`` and
``classes.parquet``. Rows with the wrong column count are skipped and counted; a file with nothing usable
raises :class:`UnusableFile`, so the stage sets it aside and fetches it again. The layout, why it is
written this way and what it costs: docs/architecture.md ("metadata") and BENCHMARKS.md.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.core.base.errors import PipelineFailure
from pipeline.core.base.io import atomic_path, replace_dir
from pipeline.core.base.manifests import (
    BOX_SCHEMA,
    CLASS_SCHEMA,
    CODES,
    COORDS,
    F32,
    FLAGS,
    I8,
    IMAGE_COLUMNS,
    IMAGE_SCHEMA,
    PART_FILE,
    PARTITION,
    STR,
    partition_dir,
)
from pipeline.core.base.safe import IMAGE_ID_PATTERN

#: columns kept from the box CSVs (13-column V4/V5 and 21-column V6 files alike), with their types
BOX_CSV_TYPES: dict[str, pa.DataType] = {
    "ImageID": STR, "Source": CODES, "LabelName": STR, "Confidence": F32,
    **{c: F32 for c in COORDS}, **{f: I8 for f in FLAGS},
}
#: what the box reader yields: the file's columns plus the partition key
_BUFFER_SCHEMA = BOX_SCHEMA.append(pa.field(PARTITION, STR))
#: rows buffered before a flush: ~50 bytes each in Arrow, so ~100 MB, plus the same again while sorting
FLUSH_ROWS = 2_000_000
#: CSV block size: large enough for the parser threads, small enough to keep memory flat
BLOCK_SIZE = 4 << 20
#: lz4: zstd made the cache 1.6x smaller (360 vs 560 MB) for ~20 % more conversion CPU here
COMPRESSION = "lz4"


class UnusableFile(PipelineFailure):
    """A downloaded metadata file with nothing this stage can use: not the format it should be in."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


def _shown(text: str, limit: int = 120) -> str:
    """Text from a downloaded file, for an error line: cut short, odd characters escaped (``repr``)."""
    return repr(text[:limit])


@contextmanager
def _row_decoding_errors_hidden() -> Iterator[None]:
    """Keep pyarrow's "Exception ignored" traceback off the screen while a CSV is read.

    pyarrow decodes a malformed row's text as UTF-8 before it calls our invalid-row handler; when that text
    is not UTF-8 the decoding fails inside pyarrow, which reports it through ``sys.unraisablehook`` (a
    traceback on stderr) and then fails the read with ``ArrowInvalid``, which the callers do handle.
    """
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not isinstance(unraisable.exc_value, UnicodeDecodeError):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


@dataclass
class ConvertStats:
    """What a conversion read: rows written, rows skipped by reason (with the first one, for the log)."""

    rows: int = 0
    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    first_skipped: str = ""
    labels: int = 0

    def skip(self, row: pacsv.InvalidRow) -> str:
        """pyarrow's handler for a row without the header's column count."""
        self.reject("wrong number of columns", 1,
                    f"{row.actual_columns} of {row.expected_columns} columns: {row.text[:120]!r}")
        return "skip"

    def reject(self, reason: str, count: int, example: str) -> None:
        if count:
            self.skipped += count
            self.reasons[reason] += count
            self.first_skipped = self.first_skipped or f"{reason}: {example}"


@dataclass
class _Source:
    subset: str
    path: Path
    stats: ConvertStats = field(default_factory=ConvertStats)


def header(path: Path) -> list[str]:
    """The column names on the first line of a CSV (a UTF-8 byte-order mark is ignored)."""
    with path.open("rb") as fh:
        first = fh.readline(1 << 16).decode("utf-8-sig", errors="replace")
    return next(csv.reader(io.StringIO(first)), [])


def _open_csv(path: Path, types: dict[str, pa.DataType], stats: ConvertStats,
              tolerant: bool = False) -> Iterator[pa.RecordBatch]:
    """Batches of ``path``'s columns in ``types``.

    The fast way lets pyarrow parse every value, and one value that is not a number (or one byte that is
    not UTF-8) fails the whole file with ``ArrowInvalid``. The caller then reads again ``tolerant``: every
    column as raw bytes, converted block by block, where a block that does not convert is repaired row by
    row (invalid UTF-8 replaced, a row with a bad number skipped and counted). Good files never pay for it.
    """
    columns = header(path)
    missing = [c for c in types if c not in columns]
    if missing:
        raise UnusableFile(path, f"no column {', '.join(missing)} in its header ({_shown(','.join(columns))})")
    read_types = {name: pa.binary() for name in types} if tolerant else types
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=BLOCK_SIZE, encoding="utf8"),  # bytes columns are not checked
            parse_options=pacsv.ParseOptions(invalid_row_handler=stats.skip),
            convert_options=pacsv.ConvertOptions(column_types=read_types, include_columns=list(types)),
        )
        for batch in reader:
            yield _repair(batch, types, stats) if tolerant else batch
    except pa.ArrowInvalid as exc:
        if not tolerant:
            raise  # the caller reads again, tolerant
        raise UnusableFile(path, f"not a CSV file this stage can read ({_shown(str(exc).splitlines()[0])})") from None


#: a decimal number as the CSVs write them; "nan", "inf" and words are not numbers here
_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def _repair(batch: pa.RecordBatch, types: dict[str, pa.DataType], stats: ConvertStats) -> pa.RecordBatch:
    """A tolerant batch (every column bytes) converted to ``types``: rows with a value that is not a number
    are dropped and counted, text that is not UTF-8 is decoded with replacement characters."""
    keep = np.ones(batch.num_rows, dtype=bool)
    columns: dict[str, pa.Array] = {}
    for name, kind in types.items():
        raw = batch.column(name)
        if pa.types.is_string(kind) or pa.types.is_dictionary(kind):
            columns[name] = _text(raw).cast(kind) if pa.types.is_dictionary(kind) else _text(raw)
            continue
        empty = pc.match_substring_regex(raw, r"^\s*$")  # on the bytes: a stray byte is no number either
        valid = pc.or_(empty, pc.match_substring_regex(raw, _NUMBER)).to_numpy(zero_copy_only=False)
        bad = int((~valid & keep).sum())
        if bad:
            example = raw.filter(pa.array(~valid))[0].as_py()
            stats.reject(f"{name} is not a number", bad, repr(example)[:60])
        keep &= valid
        digits = pc.if_else(pc.or_(empty, pa.array(~valid)), pa.scalar(None, pa.binary()), raw)
        columns[name] = pc.cast(pc.cast(pc.cast(digits, pa.string()), pa.float64()), kind, safe=False)
    repaired = pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))
    return repaired.filter(pa.array(keep)) if not keep.all() else repaired


def _text(raw: pa.Array) -> pa.Array:
    """Bytes as UTF-8 text; a block with invalid UTF-8 is decoded with replacement characters."""
    try:
        return pc.cast(raw, pa.string())
    except pa.ArrowInvalid:
        return pa.array([None if b is None else b.decode("utf-8", "replace") for b in raw.to_pylist()], pa.string())


def _tolerant_retry(convert: Callable[[bool], ConvertStats], what: str) -> ConvertStats:
    """Run ``convert`` the fast way; when a value does not parse, again the tolerant way (see :func:`_open_csv`)."""
    with _row_decoding_errors_hidden():
        try:
            return convert(False)
        except pa.ArrowInvalid as exc:
            first = _shown(str(exc).splitlines()[0], 160)
        stats = convert(True)
    print(f"  note        {what}: {first}; read again value by value", file=sys.stderr)
    return stats


def read_classes(path: Path) -> pa.Table:
    """``LabelName, DisplayName`` of every class; the file may or may not start with that header.

    Rows without exactly two columns, or with an empty MID, are skipped (and said); a list with no class
    left, or text that is not UTF-8, is refused in one line.
    """
    if not path.stat().st_size:
        raise UnusableFile(path, "the class list is empty")
    has_header = [c.strip().lower() for c in header(path)] == ["labelname", "displayname"]
    stats = ConvertStats()
    try:
        with _row_decoding_errors_hidden():
            table = pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(column_names=CLASS_SCHEMA.names, skip_rows=int(has_header),
                                               encoding="utf8"),
                parse_options=pacsv.ParseOptions(invalid_row_handler=stats.skip),
                convert_options=pacsv.ConvertOptions(column_types={c: STR for c in CLASS_SCHEMA.names}),
            ).cast(CLASS_SCHEMA)
    except pa.ArrowInvalid as exc:
        raise UnusableFile(path, f"not a class list ({_shown(str(exc).splitlines()[0])})") from None
    usable = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(table.column(0), ""))), 0)
    stats.reject("empty LabelName", table.num_rows - pc.sum(usable).as_py() if table.num_rows else 0, "")
    table = table.filter(usable)
    if not table.num_rows:
        raise UnusableFile(path, "no class in the class list (rows need two columns: LabelName,DisplayName)")
    if stats.skipped:
        print(f"  warning     {path.name}: skipped {stats.skipped} malformed row(s), first: {stats.first_skipped}",
              file=sys.stderr)
    return table


def read_hierarchy(path: Path) -> dict:
    """The class hierarchy JSON (root ``{"LabelName": ..., "Subcategory": [...]}``), checked for shape."""
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise UnusableFile(path, "the hierarchy is nested too deeply to read") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise UnusableFile(path, f"not a readable JSON hierarchy ({_shown(str(exc))})") from None
    except OSError as exc:
        raise PipelineFailure(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("LabelName"), str):
        raise UnusableFile(path, "the hierarchy's root has no LabelName")
    return tree


def _with_defaults(batch: pa.RecordBatch, floats: Iterable[str], flags: Iterable[str]) -> dict[str, pa.Array]:
    """Columns of ``batch`` with empty numbers made explicit: NaN for floats, -1 (unknown) for flags."""
    columns = {name: batch.column(name) for name in batch.schema.names}
    for names, value in ((floats, np.float32("nan")), (flags, np.int8(-1))):
        for name in names:
            if columns[name].null_count:
                columns[name] = pc.fill_null(columns[name], value)
    return columns


def _constant(value: str, n: int) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value]))


def _image_batches(sources: list[_Source], tolerant: bool) -> Iterator[pa.RecordBatch]:
    for source in sources:
        types = dict(IMAGE_COLUMNS)
        if "Rotation" not in header(source.path):
            del types["Rotation"]  # the V3-era table predates the column
        for batch in _open_csv(source.path, types, source.stats, tolerant):
            batch = _valid_image_ids(batch, source.stats)
            n = batch.num_rows
            columns = _with_defaults(batch, [c for c in ["Rotation"] if c in types], [])
            columns.setdefault("Rotation", pa.array(np.full(n, np.nan, dtype=np.float32)))
            columns["Subset"] = pa.repeat(pa.scalar(source.subset), n)
            source.stats.rows += n
            yield pa.RecordBatch.from_arrays([columns[name] for name in IMAGE_SCHEMA.names], schema=IMAGE_SCHEMA)


def _valid_image_ids(batch: pa.RecordBatch, stats: ConvertStats) -> pa.RecordBatch:
    """Rows whose ImageID can name a file (16 lower-case hex digits); the others are skipped and counted."""
    ids = batch.column("ImageID")
    valid = pc.fill_null(pc.match_substring_regex(ids, IMAGE_ID_PATTERN), False)
    bad = batch.num_rows - pc.sum(valid).as_py() if batch.num_rows else 0
    if not bad:
        return batch
    stats.reject("ImageID is not 16 hex digits", bad, repr(ids.filter(pc.invert(valid))[0].as_py())[:60])
    return batch.filter(valid)


def convert_images(sources: dict[str, Path], out: Path) -> ConvertStats:
    """Stream every subset's image table into one ``images.parquet`` (written to a temp file, then renamed)."""
    def run(tolerant: bool) -> ConvertStats:
        items = [_Source(subset, path) for subset, path in sources.items()]
        with atomic_path(out) as tmp, pq.ParquetWriter(tmp, IMAGE_SCHEMA, compression=COMPRESSION,
                                                       use_dictionary=["Subset", "License"]) as writer:
            for batch in _image_batches(items, tolerant):
                writer.write_batch(batch, row_group_size=1 << 16)
        return _total(items)

    return _tolerant_retry(run, out.name)


def _box_batches(sources: list[_Source], tolerant: bool) -> Iterator[pa.RecordBatch]:
    """Box CSV blocks as batches of ``BOX_SCHEMA`` + LabelName, numbered per subset file (BoxIndex)."""
    for source in sources:
        start = 0
        for batch in _open_csv(source.path, BOX_CSV_TYPES, source.stats, tolerant):
            n = batch.num_rows
            columns = _with_defaults(batch, ["Confidence", *COORDS], FLAGS)
            columns["Subset"] = _constant(source.subset, n)
            columns["BoxIndex"] = pa.arange(start, start + n)
            start += n
            source.stats.rows += n
            yield pa.RecordBatch.from_arrays(
                [columns[name] for name in [*BOX_SCHEMA.names, PARTITION]], schema=_BUFFER_SCHEMA
            )


class _PartitionWriter:
    """Appends rows to one Parquet file per LabelName, a row group per label per flush.

    A flush (sort + write) runs on a background thread while the next rows are parsed, so both cores work;
    at most one flush is in flight, so memory holds two buffers at most and row order is kept.
    """

    def __init__(self, out_dir: Path, flush_rows: int, unusable: ConvertStats) -> None:
        self.out_dir, self.flush_rows, self.unusable = out_dir, flush_rows, unusable
        self.buffer: list[pa.RecordBatch] = []
        self.buffered = 0
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="boxes-writer")
        self.pending: Future[None] | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        self.buffer.append(batch)
        self.buffered += batch.num_rows
        if self.buffered >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        batches, self.buffer, self.buffered = self.buffer, [], 0
        self._wait()
        self.pending = self.pool.submit(self._write, batches)

    def _wait(self) -> None:
        """Wait for the flush in flight; its error, if any, is raised here."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def _write(self, batches: list[pa.RecordBatch]) -> None:
        table = pa.Table.from_batches(batches, schema=_BUFFER_SCHEMA)
        labels = pc.dictionary_encode(table.column(PARTITION)).combine_chunks()
        codes = labels.indices.to_numpy()
        order = np.argsort(codes.astype(np.int16 if len(labels.dictionary) < 2**15 else np.int32), kind="stable")
        grouped = table.drop_columns([PARTITION]).take(order).combine_chunks()
        counts = np.bincount(codes, minlength=len(labels.dictionary))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for code, label in enumerate(labels.dictionary.to_pylist()):
            if not _usable_label(label):  # a partition folder is named after it: refuse what cannot be one
                self.unusable.reject("unusable LabelName", int(counts[code]), repr(label)[:60])
                continue
            self._writer(label).write_table(grouped.slice(starts[code], counts[code]), row_group_size=1 << 30)

    def _writer(self, label: str) -> pq.ParquetWriter:
        writer = self.writers.get(label)
        if writer is None:
            folder = partition_dir(self.out_dir, label)
            folder.mkdir(parents=True)
            writer = self.writers[label] = pq.ParquetWriter(
                folder / PART_FILE, BOX_SCHEMA, compression=COMPRESSION, use_dictionary=["Subset", "Source"],
                store_schema=False, write_statistics=False,
            )
        return writer

    def close(self) -> None:
        """Wait for the last flush and close every file (call :meth:`flush` first to write the rest)."""
        try:
            self._wait()
        finally:
            self.pool.shutdown()
            for writer in self.writers.values():
                writer.close()


def _usable_label(label: str | None) -> bool:
    """A MID-like name: 1-200 printable characters (real ones look like ``/m/0cdn1``)."""
    return bool(label) and len(label) <= 200 and label.isprintable()


def convert_boxes(sources: dict[str, Path], out_dir: Path, flush_rows: int = FLUSH_ROWS) -> ConvertStats:
    """Stream every subset's box CSV into the hive-partitioned ``out_dir`` (built aside, then swapped in)."""
    def run(tolerant: bool) -> ConvertStats:
        items = [_Source(subset, path) for subset, path in sources.items()]
        unusable = ConvertStats()
        with replace_dir(out_dir) as tmp:
            writer = _PartitionWriter(tmp, flush_rows, unusable)
            try:
                for batch in _box_batches(items, tolerant):
                    writer.add(batch)
                writer.flush()
            finally:
                writer.close()
        stats = _total(items)
        stats.rows -= unusable.skipped
        for reason, count in unusable.reasons.items():
            stats.reject(reason, count, unusable.first_skipped)
        stats.labels = len(writer.writers)
        return stats

    return _tolerant_retry(run, out_dir.name)


def _total(items: list[_Source]) -> ConvertStats:
    total = ConvertStats()
    for item in items:
        total.rows += item.stats.rows
        total.skipped += item.stats.skipped
        total.reasons.update(item.stats.reasons)
        total.first_skipped = total.first_skipped or (
            f"{item.path.name}: {item.stats.first_skipped}" if item.stats.first_skipped else ""
        )
    return total
