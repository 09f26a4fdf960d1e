"""The dataset package: its files, counts, attribution, licences and metadata.

Logical keys: ``splits/...`` (all of ``data/splits``: class folders, ``splits.parquet``, ``labels.json``),
``shards/...`` (the same images as WebDataset tar shards and their ``index.json``, when the shards stage ran),
``manifests/{selected,images,clean,audit}.parquet`` (audit: the ledger of every curation decision, which
``python -m pipeline.pull NAME --diff A B`` reads), ``README.md`` and ``ATTRIBUTION.csv``. No metrics: they
belong to the model (:mod:`.model`), which differs between a CPU and a GPU, while this package must be a
function of its inputs only. For the same reason the download and clean manifests travel as their content
and decisions only (:func:`decided_manifests`): how many attempts a photo took, or which transient error
came last before a download gave up, is the weather of one run, not the dataset.
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
# A spreadsheet runs a cell that starts with one of these as a formula; the text comes from Flickr.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def input_files() -> dict[str, Path]:
    """Every file that goes into the package as it is, by logical key (sorted, hidden files left out)."""
    for required in (paths.SPLITS_MANIFEST, paths.SPLITS_LABELS, *MANIFESTS.values()):
        if not required.is_file():
            raise UserError(f"{required} not found: run the stages before package first (dvc repro)")
    files = {
        f"splits/{path.relative_to(paths.SPLITS_DIR).as_posix()}": path
        for path in sorted(paths.SPLITS_DIR.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(paths.SPLITS_DIR).parts)
    }
    files.update({f"shards/{path.name}": path for path in sorted(paths.SHARDS_DIR.glob("*"))  # when the stage ran
                  if path.is_file() and not path.name.startswith(".")})
    files.update({key: path for key, path in MANIFESTS.items() if key not in DECIDED})
    return files


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


def count_images(splits_dir: Path, labels: dict[str, str]) -> dict[str, dict[str, int]]:
    """``{split: {display name: images}}`` from the files on disk: what the package really holds."""
    return {
        split: {
            display: sum(1 for f in (splits_dir / split / dirname).glob("*")
                         if f.suffix.lower() in paths.IMAGE_SUFFIXES)
            for dirname, display in sorted(labels.items(), key=lambda item: item[1])
        }
        for split in paths.SPLIT_NAMES
    }


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
