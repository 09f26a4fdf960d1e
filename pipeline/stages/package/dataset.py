"""The dataset package: its files, counts, attribution, licences and metadata.

Logical keys: ``splits/...`` (all of ``data/splits``: class folders, ``splits.parquet``, ``labels.json``),
``shards/...`` (the same images as WebDataset tar shards and their ``index.json``, when the shards stage ran),
``manifests/{selected,images,clean,audit}.parquet`` (audit: the ledger of every curation decision, which
``python -m pipeline.pull NAME --diff A B`` reads), ``README.md`` and ``ATTRIBUTION.csv``. No metrics: they
belong to the model (:mod:`.model`), which differs between a CPU and a GPU, while this package must be a
function of its inputs only.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.params import Params
from pipeline.stages.package.licences import licence_counts
from pipeline.stages.package.provenance import DATASET_PARAMS, DATASET_STAGES, code_version, recorded_params

ATTRIBUTION_COLUMNS = ["ImageID", "Title", "Author", "AuthorProfileURL", "OriginalLandingURL", "License"]
#: logical key in the package -> where the file is in the working directory
MANIFESTS = {
    "manifests/selected.parquet": paths.SELECTED,
    "manifests/images.parquet": paths.IMAGES_MANIFEST,
    "manifests/clean.parquet": paths.CLEAN_MANIFEST,
    "manifests/audit.parquet": paths.AUDIT_LEDGER,
}
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
    files.update(MANIFESTS)
    return files


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


def require_columns(table: pd.DataFrame, columns: Sequence[str], path: Path) -> pd.DataFrame:
    lacking = [column for column in columns if column not in table.columns]
    if lacking:
        raise UserError(f"{path} lacks column(s) {', '.join(lacking)}: run the stage that writes it again")
    return table


def attribution(selected: pd.DataFrame, image_ids: Sequence[str]) -> pd.DataFrame:
    """One row per photo in the splits, sorted by ImageID, with what its licence asks to credit."""
    require_columns(selected, ATTRIBUTION_COLUMNS, paths.SELECTED)
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
