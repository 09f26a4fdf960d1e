"""The contracts between stages, in one place: every Parquet file one stage writes and others read, with
its path, the stage that writes it and its columns. Producers write exactly these columns; consumers name
the ones they use and get one line (exit 2) naming the stage to re-run when a file lacks one.

The metadata stage's cache under ``data/metadata`` (docs/architecture.md, "metadata"):
``boxes/LabelName=<URI-encoded MID>/part-0.parquet`` (:data:`BOX_SCHEMA`, hive-partitioned by LabelName, so a
query for two labels opens two small files), ``images.parquet`` (:data:`IMAGE_SCHEMA`) and ``classes.parquet``
(:data:`CLASS_SCHEMA`). The stages' manifests: :data:`SELECTED`, :data:`IMAGES`, :data:`CROPS`, :data:`CLEAN`,
:data:`LEDGER`, :data:`SPLITS`.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pyarrow as pa

from pipeline.core.base import paths
from pipeline.core.base.errors import UserError
from pipeline.core.base.io import read_parquet

if TYPE_CHECKING:
    import pandas as pd

F32, I8, STR = pa.float32(), pa.int8(), pa.string()
#: low-cardinality text (Source, Subset) is handled as dictionary codes, so sorting rows moves ints, not text;
#: the files store it as plain Parquet strings (no Arrow schema is stored), so readers see ``str``
CODES = pa.dictionary(pa.int32(), STR)
FLAGS = ["IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]
COORDS = ["XMin", "XMax", "YMin", "YMax"]
#: one file per partition holds these; LabelName is the partition (the directory name)
BOX_SCHEMA = pa.schema(
    [("ImageID", STR), ("Subset", CODES), ("BoxIndex", pa.int64()), ("Source", CODES), ("Confidence", F32)]
    + [(c, F32) for c in COORDS] + [(f, I8) for f in FLAGS]
)
#: image table columns as the CSVs have them (``Thumbnail300KURL`` is not kept)
IMAGE_COLUMNS: dict[str, pa.DataType] = {
    "ImageID": STR, "OriginalURL": STR, "OriginalLandingURL": STR, "License": STR,
    "AuthorProfileURL": STR, "Author": STR, "Title": STR, "OriginalSize": pa.int64(), "OriginalMD5": STR,
    "Rotation": F32,
}
IMAGE_SCHEMA = pa.schema([("ImageID", STR), ("Subset", STR)] + [(k, v) for k, v in IMAGE_COLUMNS.items() if k != "ImageID"])
CLASS_SCHEMA = pa.schema([("LabelName", STR), ("DisplayName", STR)])
PARTITION = "LabelName"
PART_FILE = "part-0.parquet"


def partition_dir(boxes_dir: Path, label: str) -> Path:
    """The folder holding the boxes of ``label`` (a MID), whether or not it exists."""
    return boxes_dir / f"{PARTITION}={quote(label, safe='')}"


@dataclass(frozen=True)
class Manifest:
    """One Parquet file between stages: where it is, which stage writes it, and its columns in order."""

    path: Path
    stage: str
    columns: tuple[str, ...]

    def read(self) -> pd.DataFrame:
        """The file as a DataFrame; missing or damaged: one line naming the stage that writes it."""
        if not self.path.exists():
            raise UserError(f"{self.path} not found: run the {self.stage} stage first "
                            f"(python -m pipeline.stages.{self.stage}, or dvc repro {self.stage})")
        return read_parquet(self.path, f"{self.path.name} of the {self.stage} stage")

    def require(self, table: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
        """``table`` (read from this file), if it has ``columns``; else one line saying which stage to re-run."""
        columns = list(columns)
        unknown = [c for c in columns if c not in self.columns]
        if unknown:  # a consumer asking for what no producer writes is a bug in the code, not in the input
            raise ValueError(f"{self.path} has no column(s) {', '.join(unknown)} in its contract")
        lacking = [c for c in columns if c not in table.columns]
        if lacking:
            raise UserError(f"{self.path} lacks column(s) {', '.join(lacking)}: re-run the {self.stage} stage "
                            f"(dvc repro {self.stage})")
        return table


#: data/selected.parquet: one row per chosen box, with its photo's columns (left join: null when missing)
SELECTED_IMAGE_COLUMNS = tuple(name for name in IMAGE_COLUMNS if name != "ImageID")
SELECTED = Manifest(paths.SELECTED, "select", (
    "ImageID", "Subset", "BoxIndex", "Label", "LabelName", "BoxLabelName", "Source", "Confidence", *COORDS, *FLAGS,
    *SELECTED_IMAGE_COLUMNS))
#: data/images/manifest.parquet, typed in Arrow: the download stage writes it without importing pandas
IMAGES_SCHEMA = pa.schema([
    ("ImageID", pa.large_string()), ("Subset", pa.large_string()), ("status", pa.large_string()),
    ("reason", pa.large_string()), ("http_status", pa.int64()), ("url", pa.large_string()),
    ("final_url", pa.large_string()), ("path", pa.large_string()), ("bytes", pa.int64()),
    ("md5", pa.large_string()), ("attempts", pa.int64()),
])
IMAGES = Manifest(paths.IMAGES_MANIFEST, "download", tuple(IMAGES_SCHEMA.names))
CROPS = Manifest(paths.CROPS_MANIFEST, "crop", (
    "ImageID", "Subset", "BoxIndex", "Label", "LabelName", "download_status", "crop_path", "width", "height",
    "status", "reason", "image_phash"))
#: the crop manifest plus clean's verdict
CLEAN = Manifest(paths.CLEAN_MANIFEST, "clean",
                 (*CROPS.columns, "keep", "reject_reason", "detail", "sha256", "dup_group"))
#: one row per kept crop: kept, flagged or rejected, and why
LEDGER = Manifest(paths.AUDIT_LEDGER, "audit", (
    "ImageID", "BoxIndex", "Label", "crop_path", "decision", "issue", "score", "threshold", "suggested_label",
    "label_quality", "sha256"))
SPLITS = Manifest(paths.SPLITS_MANIFEST, "split", ("ImageID", "BoxIndex", "Label", "split", "path", "group"))
