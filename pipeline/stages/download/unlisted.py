"""Photos the selection no longer asks for: moved out of ``data/images``, kept with their records.

A stage's output holds exactly what its manifest lists: after narrowing the labels, ``data/images`` must not
keep the photos of the dropped label (DVC would version them, and a person counting files would count
them). Deleting them would cost the server a second request if the label comes back, so they move to
``data/images-unlisted/`` (not a DVC output) with their manifest records in ``records.parquet`` there; a later
run that selects them again moves them back and skips the request.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.base.io import write_parquet
from pipeline.core.base.manifests import IMAGES_SCHEMA
from pipeline.core.base.safe import is_image_id
from pipeline.stages.download.batches import Record, manifest_table
from pipeline.stages.download.verify import IMAGE_EXTENSIONS

RECORDS = "records.parquet"


def aside_dir(images_dir: Path) -> Path:
    return images_dir.with_name(f"{images_dir.name}-unlisted")


def _read(folder: Path) -> dict[str, Record]:
    try:
        table = pq.read_table(folder / RECORDS)
    except (OSError, pa.ArrowException):  # none yet, or damaged: the photos are fetched again
        return {}
    if not set(IMAGES_SCHEMA.names) <= set(table.column_names):
        return {}
    return {r["ImageID"]: r for r in table.select(IMAGES_SCHEMA.names).to_pylist()}


def restore(images_dir: Path, wanted: Iterable[str]) -> dict[str, Record]:
    """Move the set-aside photos among ``wanted`` back into ``images_dir``; return their records."""
    folder = aside_dir(images_dir)
    kept = _read(folder)
    back: dict[str, Record] = {}
    for image_id in set(wanted) & set(kept):
        record = kept[image_id]
        name = record.get("path") or ""
        if name and (folder / name).is_file():
            os.replace(folder / name, images_dir / name)
        back[image_id] = record
    if back:
        _write(folder, {i: r for i, r in kept.items() if i not in back})
    return back


def set_aside(images_dir: Path, manifest: pa.Table, records: dict[str, Record]) -> int:
    """Move every photo file in ``images_dir`` that ``manifest`` does not list into the aside folder, with its
    record from ``records`` when there is one; return how many moved."""
    listed = set(manifest.column("path").to_pylist())
    strays = [f for f in images_dir.iterdir()
              if f.is_file() and f.suffix[1:] in IMAGE_EXTENSIONS and is_image_id(f.stem) and f.name not in listed]
    if not strays:
        return 0
    folder = aside_dir(images_dir)
    folder.mkdir(exist_ok=True)
    kept = _read(folder)
    for file in strays:
        os.replace(file, folder / file.name)
        if file.stem in records and records[file.stem].get("path") == file.name:
            kept[file.stem] = records[file.stem]
    _write(folder, kept)
    return len(strays)


def _write(folder: Path, records: dict[str, Record]) -> None:
    write_parquet(manifest_table([{name: r.get(name) for name in IMAGES_SCHEMA.names} for r in records.values()]),
                  folder / RECORDS)
