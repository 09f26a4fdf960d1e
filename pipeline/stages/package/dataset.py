"""The dataset package: its files, counts, attribution, licences and metadata.

Logical keys: ``shards/{train,val,test}-NNNNNN.tar`` and ``shards/index.json`` (every crop, once, in the
WebDataset tars the shards stage wrote: byte-deterministic, so the same inputs give the same top hash),
``splits/splits.parquet`` and ``splits/labels.json``, ``manifests/{selected,images,clean,audit}.parquet``
(audit: the ledger of every curation decision, which ``python -m pipeline.pull NAME --diff A B`` reads),
``README.md`` and ``ATTRIBUTION.csv``. No entry per crop: a package's cost grows with its entries, and
``python -m pipeline.pull`` unpacks the shards into class folders (:mod:`pipeline.core.learn.unpack`). The
shards are published only when they hold the class folders on disk (:func:`check_shards`), and the counts
come from ``splits.parquet``, checked against the shards' index. No metrics: they belong to the model
(:mod:`.model`), which differs between a CPU and a GPU, while this package must be a function of its inputs
only. For the same reason the download and clean manifests travel as their content and decisions only
(:func:`decided_manifests`): how many attempts a photo took, or which transient error came last before a
download gave up, is the weather of one run, not the dataset.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.base import manifests, paths
from pipeline.core.base.errors import UserError
from pipeline.core.base.io import read_table, write_parquet
from pipeline.core.base.params import Params
from pipeline.core.base.status import Download
from pipeline.core.learn.folders import read_classes
from pipeline.core.learn.shard_index import INDEX_NAME, ShardIndex, holds_folders, read_index
from pipeline.stages.package.licences import licence_counts
from pipeline.stages.package.naming import DATASET
from pipeline.stages.package.provenance import DATASET_PARAMS, DATASET_STAGES, code_version, recorded_params

ATTRIBUTION_COLUMNS = ["ImageID", "Title", "Author", "AuthorProfileURL", "OriginalLandingURL", "License"]
#: logical key in the package -> where the file is in the working directory
MANIFESTS = {
    "manifests/selected.parquet": paths.SELECTED,
    "manifests/images.parquet": paths.IMAGES_MANIFEST,
    "manifests/clean.parquet": paths.CLEAN_MANIFEST,
    "manifests/audit.parquet": paths.AUDIT_LEDGER,
}
#: the manifests the package carries as their decisions (:func:`decided_manifests`), not byte for byte
DECIDED = ("manifests/images.parquet", "manifests/clean.parquet")
#: download manifest columns about how the run went (retries), not about the photo: left out
RUN_COLUMNS = ("attempts",)
#: what a ``failed`` download says in the package, whichever transient error came last, after how many
#: attempts, under which deadline: the status alone is the decision (no photo; the next run asks again)
FAILED_REASON = "no final answer from the server (retries or the deadline ran out); a re-run asks again"
ANNOTATIONS_LICENSE = "CC BY 4.0 (Google LLC)"
#: what makes the shards the package needs, and makes them again when they are stale
RUN_SHARDS = "run the shards stage (python -m pipeline.stages.shards), then package"
# A spreadsheet runs a cell that starts with one of these as a formula; the text comes from Flickr.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def read_shards() -> ShardIndex:
    """The shards' index; a :class:`UserError` naming the stage to run when there is none."""
    index = read_index(paths.SHARDS_DIR)
    if index is None:
        raise UserError(f"{paths.SHARDS_DIR / INDEX_NAME} not found: the dataset package carries the crops as "
                        f"shards; {RUN_SHARDS}")
    return index


def input_files(index: ShardIndex) -> dict[str, Path]:
    """Every file that goes into the package as it is, by logical key: the split tables, the shards the index
    lists (each there, at its size) and the index, the manifests carried byte for byte."""
    for required in (paths.SPLITS_MANIFEST, paths.SPLITS_LABELS, *MANIFESTS.values()):
        if not required.is_file():
            raise UserError(f"{required} not found: run the stages before package first (dvc repro)")
    files = {"splits/splits.parquet": paths.SPLITS_MANIFEST, "splits/labels.json": paths.SPLITS_LABELS}
    for entry in index.splits.values():
        for name, size in zip(entry.files, entry.sizes, strict=True):
            shard = paths.SHARDS_DIR / name
            if not shard.is_file() or shard.stat().st_size != size:
                raise UserError(f"{shard}: missing, or not the size {INDEX_NAME} lists; {RUN_SHARDS}")
            files[f"shards/{name}"] = shard
    files[f"shards/{INDEX_NAME}"] = paths.SHARDS_DIR / INDEX_NAME
    files.update({key: path for key, path in MANIFESTS.items() if key not in DECIDED})
    return files


def check_shards(index: ShardIndex, counts: dict[str, dict[str, int]]) -> None:
    """Refuse shards that are not the splits as they are now: each split's class folders (files, sizes,
    classes: the test training applies) and its count in ``splits.parquet``. A split re-run without the
    shards stage would otherwise publish old crops under a new table."""
    classes = read_classes(paths.SPLITS_DIR)
    present = [name for name in paths.SPLIT_NAMES if (paths.SPLITS_DIR / name).is_dir()]
    stale = [name for name in present if not holds_folders(index, paths.SPLITS_DIR, name, classes)]
    stale += [name for name, entry in index.splits.items()
              if name not in present or entry.images != sum(counts[name].values())]
    stale += [name for name, per_label in counts.items() if sum(per_label.values()) and name not in index.splits]
    if stale:
        raise UserError(f"{paths.SHARDS_DIR} does not hold {', '.join(sorted(set(stale)))} of {paths.SPLITS_DIR} "
                        f"as it is now; {RUN_SHARDS}")


def decided_manifests(staging: Path) -> dict[str, Path]:
    """The download and clean manifests as the package carries them, written into ``staging``: every row and
    column that says what a photo is and what was decided, nothing that varies with a transient fault.

    The download manifest loses ``attempts``; its ``failed`` rows keep their status but not the last error
    (``reason``, ``http_status``, ``final_url``: a 429, a 500 or a timeout, with runtime settings in the
    text). The clean manifest repeats that reason for the boxes of such photos (``reason``, ``detail``), so
    there it becomes the same fixed text. Every other status is the server's final answer about the photo
    (200 and its bytes, 404, a redirect to the placeholder...), the same however many tries it took.
    """
    images = read_table(paths.IMAGES_MANIFEST, "download manifest")
    images = images.drop_columns([c for c in RUN_COLUMNS if c in images.column_names])
    images = _overwrite(images, _is_failed(images, "status"),
                        {"reason": FAILED_REASON, "http_status": 0, "final_url": ""})
    clean = read_table(paths.CLEAN_MANIFEST, "clean manifest")
    said = f"{Download.FAILED}: {FAILED_REASON}"  # the crop stage's form: "<download status>: <reason>"
    clean = _overwrite(clean, _is_failed(clean, "download_status"), {"reason": said, "detail": said})
    return {"manifests/images.parquet": write_parquet(images, staging / "images.parquet"),
            "manifests/clean.parquet": write_parquet(clean, staging / "clean.parquet")}


def _is_failed(table: pa.Table, column: str) -> pa.ChunkedArray | None:
    """Which rows' ``column`` says ``failed`` (None when the table has no such column)."""
    if column not in table.column_names:
        return None
    return pc.fill_null(pc.equal(table[column], Download.FAILED.value), False)


def _overwrite(table: pa.Table, rows: pa.ChunkedArray | None, values: dict[str, object]) -> pa.Table:
    """``table`` with ``values`` in those of its columns that exist, on ``rows`` (a mask) only."""
    if rows is None:
        return table
    for column, value in values.items():
        if column in table.column_names:
            index = table.schema.get_field_index(column)
            field = table.schema.field(index)
            table = table.set_column(index, field, pc.if_else(rows, pa.scalar(value, field.type), table[column]))
    return table


def read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object")
    return value


def read_labels() -> dict[str, str]:
    """``{folder name: display name}`` of the splits."""
    labels = read_json_object(paths.SPLITS_LABELS)
    if not labels or not all(isinstance(v, str) and v for v in labels.values()):
        raise UserError(f"{paths.SPLITS_LABELS}: expected {{folder: label name}}; run the split stage again")
    return labels


def count_images(splits: pd.DataFrame, labels: dict[str, str]) -> dict[str, dict[str, int]]:
    """``{split: {display name: images}}`` from ``splits.parquet`` (its ``split`` and ``Label`` columns), which
    :func:`check_shards` holds against the shards: no walk over the files."""
    manifests.SPLITS.require(splits, ["split", "Label"])
    per = splits.groupby(["split", "Label"]).size()
    unknown = sorted(set(splits["Label"]) - set(labels.values()))
    if unknown:
        raise UserError(f"{paths.SPLITS_MANIFEST}: label {unknown[0]!r} is not in {paths.SPLITS_LABELS}; "
                        "run the split stage again")
    return {split: {display: int(per.get((split, display), 0)) for display in sorted(labels.values())}
            for split in paths.SPLIT_NAMES}


def attribution(selected: pd.DataFrame, image_ids: Sequence[str]) -> pd.DataFrame:
    """One row per photo in the splits, sorted by ImageID, with what its licence asks to credit."""
    manifests.SELECTED.require(selected, ATTRIBUTION_COLUMNS)
    info = selected.drop_duplicates("ImageID").set_index("ImageID")
    wanted = sorted(set(image_ids))
    missing = [image_id for image_id in wanted if image_id not in info.index]
    if missing:
        raise UserError(
            f"{len(missing)} image(s) in {paths.SPLITS_MANIFEST} are not in {paths.SELECTED} (e.g. {missing[0]}): "
            "the inputs come from different runs; run dvc repro"
        )
    table = info.loc[wanted, ATTRIBUTION_COLUMNS[1:]].fillna("").astype(str)
    return table.map(_spreadsheet_safe).rename_axis("ImageID").reset_index()


def _spreadsheet_safe(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def metadata(params: Params, counts: dict[str, dict[str, int]], credits: pd.DataFrame) -> dict:
    """The dataset package's metadata: deterministic, JSON-plain, no timestamps, nothing of the machine."""
    return {
        "kind": DATASET,
        "dataset": {
            "labels": sorted(counts[paths.SPLIT_NAMES[0]]),
            "counts": counts,
            "images": sum(sum(per_label.values()) for per_label in counts.values()),
            "photos": len(credits),
        },
        "source": {
            "name": "Open Images",
            "version": params.source.version,
            "subsets": list(params.source.subsets),
            "images": params.source.images,
        },
        "params": recorded_params(params, DATASET_PARAMS),
        "code": code_version(DATASET_STAGES),
        "license": {
            # the License column as the image table gives it (the ' a spreadsheet guard adds is not part of it)
            "images": licence_counts(credits["License"].str.removeprefix("'")),
            "attribution": "ATTRIBUTION.csv",
            "annotations": ANNOTATIONS_LICENSE,
        },
    }
