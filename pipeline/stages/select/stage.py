"""The select stage: the boxes of the requested labels, with everything later stages need.

``labels`` (display names or MIDs; an unknown one stops the run, exit 2), their subclasses with
``select.include_subclasses`` (a box goes to the most specific label), the ``exclude_*`` flags and
``min_box_area``, then at most ``limit_per_label`` boxes per label drawn with ``seed`` and the label's MID;
the image table's columns joined on ImageID. Only the partitions of the MIDs the labels reach are opened.
The rules in order, and why it is fast: docs/architecture.md ("select").
"""
from __future__ import annotations

import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.base import manifests
from pipeline.core.base.errors import UserError
from pipeline.core.base.io import open_parquet, write_parquet
from pipeline.core.base.manifests import BOX_SCHEMA, SELECTED_IMAGE_COLUMNS, partition_dir
from pipeline.core.base.params import Params, SelectParams
from pipeline.core.base.paths import BOXES_DIR, CLASSES_TABLE, HIERARCHY_JSON, IMAGES_TABLE, SELECTED
from pipeline.core.base.safe import IMAGE_ID_PATTERN
from pipeline.core.base.stages import Summary
from pipeline.core.net.labels import ClassList, Hierarchy, assign

BOX_COLUMNS = BOX_SCHEMA.names
_NUMPY_TYPES = {str(t): np.dtype(d) for t, d in [(pa.int8(), np.int8), (pa.int32(), np.int32), (pa.int64(), np.int64),
                                                 (pa.uint64(), np.uint64), (pa.float32(), np.float32)]}
_EXCLUDE = {"exclude_group_of": "IsGroupOf", "exclude_depiction": "IsDepiction",
            "exclude_occluded": "IsOccluded", "exclude_truncated": "IsTruncated"}


def _arrow(values: np.ndarray) -> pa.Array:
    """A numeric numpy array as Arrow, zero-copy, without ``pa.array()`` (which imports pandas)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _numpy(column: pa.Array | pa.ChunkedArray, fill: float | int | None = None) -> np.ndarray:
    """A numeric Arrow column as numpy, without ``to_numpy()`` (which imports pandas): zero-copy when it has no
    nulls; nulls become ``fill`` (a copy), and without a ``fill`` they are an error."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dtype = _NUMPY_TYPES[str(array.type)]
    values = np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)
    if not array.null_count:
        return values
    if fill is None:
        raise ValueError(f"unexpected nulls in a {array.type} column")
    bits = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), bitorder="little")
    valid = bits[array.offset:array.offset + len(array)].astype(bool)
    return np.where(valid, values, fill).astype(dtype)


def _strings(values: Sequence[str]) -> pa.Array:
    """A small list of str as an Arrow string array, without ``pa.array()``."""
    encoded = [v.encode() for v in values]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


@dataclass
class LabelCounts:
    """How many boxes of one label survived each step (for the printed table)."""

    label: str
    mid: str
    found: int = 0
    kept: int = 0
    selected: int = 0
    images: int = 0
    #: boxes found per subclass (display name; not the label's own boxes)
    subclasses: dict[str, int] = field(default_factory=dict)


@dataclass
class Boxes:
    """Boxes read from the partitions, with numpy codes for their requested label and their own MID."""

    table: pa.Table
    #: per row: index into the requested MIDs
    label: np.ndarray
    #: per row: index into ``box_mids``
    box: np.ndarray
    box_mids: list[str]

    def take(self, rows: np.ndarray) -> Boxes:
        return Boxes(self.table.take(_arrow(rows)), self.label[rows], self.box[rows], self.box_mids)


def read_boxes(boxes_dir: Path, claims: dict[str, str], mids: Sequence[str]) -> Boxes:
    """Boxes of every MID in ``claims`` (box MID -> requested MID), reading only those partitions."""
    if not boxes_dir.is_dir():
        raise UserError(f"{boxes_dir} not found: run `python -m pipeline.stages.metadata` first")
    tables, labels, boxes = [], [], []
    box_mids = list(claims)
    for code, box_mid in enumerate(box_mids):
        folder = partition_dir(boxes_dir, box_mid)
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            table = open_parquet(path, "box cache (metadata stage)", memory_map=True).read(
                columns=BOX_COLUMNS, use_threads=True)
            tables.append(table)
            labels.append(np.full(table.num_rows, mids.index(claims[box_mid]), dtype=np.int32))
            boxes.append(np.full(table.num_rows, code, dtype=np.int32))
    if not tables:
        empty = np.zeros(0, dtype=np.int32)
        return Boxes(_empty_boxes(), empty, empty, box_mids)
    return Boxes(pa.concat_tables(tables).combine_chunks(), np.concatenate(labels), np.concatenate(boxes), box_mids)


def _empty_boxes() -> pa.Table:
    return pa.schema([f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f
                      for f in BOX_SCHEMA]).empty_table().select(BOX_COLUMNS)


def usable_rows(table: pa.Table) -> tuple[np.ndarray, dict[str, int]]:
    """Rows later stages can use, and how many were not, by reason: the metadata comes from the internet, and
    an ImageID names a file, a box's coordinates make a crop (NaN or infinity in either would not)."""
    valid_id = pc.match_substring_regex(table.column("ImageID"), IMAGE_ID_PATTERN)  # null for a null ImageID
    keep = _numpy(pc.cast(valid_id, pa.int8()), fill=0).astype(bool)
    bad = {"ImageID is not 16 hex digits": int((~keep).sum())}
    finite = np.ones(table.num_rows, dtype=bool)
    for column in ("XMin", "XMax", "YMin", "YMax"):
        finite &= np.isfinite(_numpy(table.column(column), fill=np.nan))
    bad["coordinates are not finite numbers"] = int((keep & ~finite).sum())
    return keep & finite, {reason: n for reason, n in bad.items() if n}


def keep_mask(table: pa.Table, options: SelectParams) -> np.ndarray:
    """Rows that pass the flag exclusions (flag == 1 drops; -1 unknown stays) and the minimum area."""
    keep = np.ones(table.num_rows, dtype=bool)
    for option, flag in _EXCLUDE.items():
        if getattr(options, option):
            keep &= _numpy(table.column(flag), fill=-1) != 1
    if options.min_box_area > 0:
        x0, x1, y0, y1 = (_numpy(table.column(c), fill=np.nan).astype(np.float64) for c in ("XMin", "XMax", "YMin", "YMax"))
        keep &= (x1 - x0) * (y1 - y0) >= options.min_box_area
    return keep


def canonical_order(boxes: Boxes) -> np.ndarray:
    """Row order: by requested label, then Subset, ImageID, BoxIndex (one fixed order for the seeded draw)."""
    keyed = boxes.table.select(["Subset", "ImageID", "BoxIndex"]).append_column("_label", _arrow(boxes.label))
    order = pc.sort_indices(keyed, sort_keys=[("_label", "ascending"), ("Subset", "ascending"),
                                              ("ImageID", "ascending"), ("BoxIndex", "ascending")])
    return _numpy(order)


def limit_rows(label: np.ndarray, mids: Sequence[str], limit: int, seed: int) -> np.ndarray:
    """Row indices to keep, in order: per label at most ``limit``, drawn reproducibly (see the module doc)."""
    if limit <= 0:
        return np.arange(len(label))
    keep = []
    for code, mid in enumerate(mids):
        rows = np.flatnonzero(label == code)
        if len(rows) > limit:
            rng = np.random.default_rng([seed, zlib.crc32(mid.encode())])
            rows = np.sort(rng.choice(rows, size=limit, replace=False))
        keep.append(rows)
    return np.sort(np.concatenate(keep))


def read_images(path: Path, image_ids: pa.ChunkedArray | pa.Array) -> pa.Table:
    """``ImageID`` + the selection's image columns of the given images, one batch at a time (memory stays flat)."""
    if not path.exists():
        raise UserError(f"{path} not found: run `python -m pipeline.stages.metadata` first")
    wanted = pc.unique(image_ids)
    columns = ["ImageID", *SELECTED_IMAGE_COLUMNS]
    # License has a handful of values: reading it as dictionary codes skips decoding 1.7 M strings;
    # memory-mapping saves copying the file through read() (0.5 s of system time here)
    table_file = open_parquet(path, "image table (metadata stage)", read_dictionary=["License"], memory_map=True)
    batches = [batch.filter(pc.is_in(batch.column(0), value_set=wanted))
               for batch in table_file.iter_batches(batch_size=1 << 16, columns=columns)]
    images = pa.Table.from_batches(batches) if batches else table_file.schema_arrow.empty_table().select(columns)
    license_index = images.schema.get_field_index("License")
    return images.set_column(license_index, "License", images.column("License").cast(pa.string()))


def assemble(boxes: Boxes, mids: Sequence[str], names: dict[str, str], images: pa.Table) -> pa.Table:
    """The output table: boxes + Label/LabelName/BoxLabelName + the image columns (left join on ImageID)."""
    table = boxes.table
    label_codes, box_codes = _arrow(boxes.label), _arrow(boxes.box)
    table = table.append_column("Label", _strings([names[m] for m in mids]).take(label_codes))
    table = table.append_column("LabelName", _strings(mids).take(label_codes))
    table = table.append_column("BoxLabelName", _strings(boxes.box_mids).take(box_codes))
    index = pc.index_in(table.column("ImageID"), value_set=images.column("ImageID").combine_chunks())
    for name in SELECTED_IMAGE_COLUMNS:
        table = table.append_column(name, images.column(name).take(index))
    return table.select(list(manifests.SELECTED.columns))


def select(labels: Sequence[str], options: SelectParams, out: Path = SELECTED) -> list[LabelCounts]:
    """Write ``out`` for ``labels`` and return the per-label counts."""
    classes = ClassList.load(CLASSES_TABLE)
    mids = classes.resolve_all(labels)
    hierarchy = Hierarchy.load(HIERARCHY_JSON) if options.include_subclasses else None
    claims = assign(mids, hierarchy)
    counts = [LabelCounts(classes.names[mid], mid) for mid in mids]

    boxes = read_boxes(BOXES_DIR, claims, mids)
    for code, n in enumerate(np.bincount(boxes.box, minlength=len(boxes.box_mids))):
        box_mid = boxes.box_mids[code]
        counts[mids.index(claims[box_mid])].found += int(n)
        if n and box_mid not in mids:
            counts[mids.index(claims[box_mid])].subclasses[classes.names.get(box_mid, box_mid)] = int(n)
    usable, bad = usable_rows(boxes.table)
    for reason, n in bad.items():
        print(f"warning: skipped {n:,} box(es) whose {reason}", file=sys.stderr)
    boxes = boxes.take(np.flatnonzero(usable & keep_mask(boxes.table, options)))
    boxes = boxes.take(canonical_order(boxes))
    for code, n in enumerate(np.bincount(boxes.label, minlength=len(mids))):
        counts[code].kept = int(n)
    boxes = boxes.take(limit_rows(boxes.label, mids, options.limit_per_label, options.seed))

    result = assemble(boxes, mids, classes.names, read_images(IMAGES_TABLE, boxes.table.column("ImageID")))
    write_parquet(result, out)
    image_ids = result.column("ImageID").to_pylist()
    for code, count in enumerate(counts):
        count.selected = int(np.count_nonzero(boxes.label == code))
        count.images = len({image_ids[i] for i in np.flatnonzero(boxes.label == code)})
    missing = result.column("OriginalURL").null_count
    if missing:
        print(f"warning: {missing} selected box(es) have no row in the image table (no URL)", file=sys.stderr)
    return counts


def format_counts(counts: Sequence[LabelCounts], options: SelectParams) -> str:
    """The per-label table printed at the end of a run."""
    header = ("label", "MID", "boxes", "after filters", "selected", "images")
    rows = [(c.label, c.mid, f"{c.found:,}", f"{c.kept:,}", f"{c.selected:,}", f"{c.images:,}") for c in counts]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    for c in counts:
        if c.subclasses:
            parts = ", ".join(f"{name} {n:,}" for name, n in sorted(c.subclasses.items(), key=lambda x: -x[1]))
            lines.append(f"{c.label} includes subclass boxes: {parts}")
    if options.limit_per_label:
        lines.append(f"limit {options.limit_per_label:,} boxes per label, seed {options.seed}")
    return "\n".join(lines)


@dataclass(frozen=True)
class SelectSummary(Summary):
    """The per-label counts (boxes found, after the filters, selected, images) under ``options``."""

    counts: list[LabelCounts]
    options: SelectParams

    def lines(self) -> list[str]:
        return [f"wrote {SELECTED}", format_counts(self.counts, self.options)]

    def warnings(self) -> list[str]:
        return [f"no boxes selected for '{c.label}' (see the select.* options)" for c in self.counts if not c.selected]


def run(params: Params) -> SelectSummary:
    """The stage: the boxes of ``params.labels`` into ``data/selected.parquet``."""
    return SelectSummary(select(params.labels, params.select), params.select)
