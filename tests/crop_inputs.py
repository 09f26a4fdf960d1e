"""Crop and clean inputs made from the mirror's own files, to the contracts in docs/architecture.md.

``data/selected.parquet`` holds the boxes of the requested labels and ``data/images`` what the download stage
keeps of each photo (the bytes the mirror serves, the placeholder PNG for a redirect), with a manifest whose
status is the one the mirror expects download to record. No HTTP: crop and clean tests stay fast and do not
depend on the download stage.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pandas as pd

from pipeline.core.base import paths
from pipeline.core.base.io import write_parquet
from pipeline.mirror import Mirror, dataset, drawing

KEPT = ("ok", "changed", "placeholder")
PNG_MAGIC = b"\x89PNG"


def mirror_records(mirror: Mirror) -> list[dataset.ImageRecord]:
    """The mirror's images (read back from its cache: the very files it serves)."""
    return dataset.build(mirror.root, mirror.spec)


def write_inputs(mirror: Mirror, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write selected.parquet, data/images and its manifest under ``root``; return (boxes, downloads)."""
    names = dataset.display_names()
    boxes, downloads = [], []
    images_dir = root / paths.IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    row_number = 0
    for record in mirror_records(mirror):
        for box in record.boxes:
            row_number += 1
            if box.LabelName in mirror.spec.labels:
                boxes.append({
                    "ImageID": record.ImageID, "Subset": record.Subset, "BoxIndex": row_number,
                    "Label": names[box.LabelName], "LabelName": box.LabelName,
                    "XMin": box.XMin, "XMax": box.XMax, "YMin": box.YMin, "YMax": box.YMax,
                    "Rotation": math.nan if record.Rotation is None else record.Rotation,
                })
        downloads.append(_download(mirror, record, images_dir))
    frames = pd.DataFrame(boxes).astype({"XMin": "float32", "XMax": "float32", "YMin": "float32",
                                         "YMax": "float32", "Rotation": "float32"}), pd.DataFrame(downloads)
    write_parquet(frames[0], root / paths.SELECTED)
    write_parquet(frames[1], root / paths.IMAGES_MANIFEST)
    return frames


def _download(mirror: Mirror, record: dataset.ImageRecord, images_dir: Path) -> dict:
    fault = dataset.FAULTS.get(record.fault)
    status = fault.expected_status if fault else "ok"
    body = None
    if status == "placeholder":
        body = drawing.placeholder_png()
    elif status in KEPT:
        body = (mirror.root / record.served).read_bytes()
    path = ""
    if body is not None:
        path = record.ImageID + (".png" if body.startswith(PNG_MAGIC) else ".jpg")
        (images_dir / path).write_bytes(body)
    return {
        "ImageID": record.ImageID, "Subset": record.Subset, "status": status,
        "reason": fault.detail if fault and status != "ok" else "", "path": path,
        "bytes": len(body) if body else 0, "md5": hashlib.md5(body).hexdigest() if body else "",
    }
