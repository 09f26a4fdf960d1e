"""The Parquet cache under ``data/metadata`` as a data contract: written by the metadata stage, read by
select (docs/architecture.md, "metadata").

- ``boxes/LabelName=<URI-encoded MID>/part-0.parquet``: :data:`BOX_SCHEMA`, hive-partitioned by LabelName,
  so a query for two labels opens two small files;
- ``images.parquet``: :data:`IMAGE_SCHEMA`; ``classes.parquet``: :data:`CLASS_SCHEMA`.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pyarrow as pa

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
