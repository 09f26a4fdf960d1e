"""The metadata files the mirror serves, rendered in each Open Images version's real formats.

Formats copied from the real files (see ``tests/fixtures/openimages-samples/SOURCES.md``):
13-column box CSVs with ``%.6f`` coordinates under ``2018_04/`` and float32-shortest coordinates under
``v5/``; the V6 train box file with 21 columns (``XClick1X..XClick4Y``, -1 when not clicked); 12-column
image tables with a base64 ``OriginalMD5``, ``Rotation`` as ``0.0``/``90.0``/``270.0`` or empty, and
CSV-quoted titles; the class list without a header at the ``2018_04``/``v5`` paths and with a
``LabelName,DisplayName`` header at the v7 path; the real hierarchy JSON, verbatim.
The real sample rows travel inside these files, sorted among the synthetic ones by ImageID.
"""
from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from pipeline.core.net.sources import LAYOUTS
from pipeline.mirror.dataset import FAULTS, FIXTURES, UPRIGHT, BoxRecord, ImageRecord, display_names

BOX_COLUMNS = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
               "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]
XCLICK_COLUMNS = [f"XClick{i}X" for i in range(1, 5)] + [f"XClick{i}Y" for i in range(1, 5)]
IMAGE_COLUMNS = ["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL",
                 "Author", "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL", "Rotation"]
#: when the served files say they were last changed (fixed, so the bytes of a response never vary)
LAST_MODIFIED = "Mon, 30 Apr 2018 12:00:00 GMT"

#: real rows (verbatim copies of tests/fixtures/openimages-samples) mixed into each served file
_REAL_ROWS = {
    "2018_04/train/train-annotations-bbox.csv": ["real-train-annotations-bbox.2018_04.csv",
                                                 "real-misc-bbox-rows.csv",
                                                 "real-v4-doc-example-annotations-bbox.csv"],
    "v6/oidv6-train-annotations-bbox.csv": ["real-oidv6-train-annotations-bbox.csv"],
    "v5/validation-annotations-bbox.csv": ["real-v5-validation-annotations-bbox.csv"],
    "2018_04/train/train-images-boxable-with-rotation.csv": ["real-train-images-boxable-with-rotation.csv"],
    "2018_04/validation/validation-images-with-rotation.csv": ["real-validation-images-with-rotation.csv"],
}


def _fixed6(value: float) -> str:
    return f"{value:.6f}"


def _float32(value: float) -> str:
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


def original_path(record: ImageRecord) -> str:
    """The Flickr-like path of an original: ``/flickr/<server>/<photo>_<secret>_o.<ext>``."""
    return f"/flickr/{record.server}/{record.photo_id}_{record.secret}_o.{record.ext}"


def original_url(record: ImageRecord, url: str) -> str:
    if record.fault == "bad_url":
        return "ftp://" + urlsplit(url).netloc + original_path(record)
    return url + original_path(record)


def _box_rows(records: Iterable[ImageRecord], subset: str, fmt: Callable[[float], str], xclick: bool) -> list[list[str]]:
    rows = []
    for record in records:
        if record.Subset != subset:
            continue
        for n, box in enumerate(record.boxes):
            coords = [box.XMin, box.XMax, box.YMin, box.YMax]
            row = [record.ImageID, box.Source, box.LabelName, "1", *map(fmt, coords),
                   *(str(getattr(box, flag)) for flag in BOX_COLUMNS[8:])]
            if xclick:
                row += _xclicks(record.ImageID, n, box, fmt)
            rows.append(row)
    return rows


def _xclicks(image_id: str, n: int, box: BoxRecord, fmt: Callable[[float], str]) -> list[str]:
    """Extreme clicking's four points (top, left, bottom, right); -1 for boxes not drawn by clicking."""
    if box.Source != "xclick":
        return ["-1"] * 8
    rng = np.random.default_rng([int(image_id, 16), n])
    tx, bx = rng.uniform(box.XMin, box.XMax, size=2)
    ly, ry = rng.uniform(box.YMin, box.YMax, size=2)
    xs, ys = [tx, box.XMin, bx, box.XMax], [box.YMin, ly, box.YMax, ry]
    return [fmt(v) for v in xs + ys]


def _image_rows(records: Iterable[ImageRecord], subset: str, url: str) -> list[list[str]]:
    rows = []
    for r in records:
        if r.Subset != subset:
            continue
        thumb_secret = hashlib.sha256(r.secret.encode()).hexdigest()[:10]
        rows.append([
            r.ImageID, r.Subset, original_url(r, url), f"{url}/flickr/photos/{r.user}/{r.photo_id}", r.License,
            f"{url}/flickr/people/{r.user}/", r.Author, r.Title, str(r.OriginalSize), r.OriginalMD5,
            f"{url}/flickr/{r.server}/{r.photo_id}_{thumb_secret}_z.jpg",
            "" if r.Rotation is None else f"{r.Rotation:.1f}",
        ])
    return rows


def _csv(header: list[str] | None, rows: list[list[str]], real_files: list[str]) -> bytes:
    """Header plus rows sorted by ImageID, the real fixture lines kept byte for byte."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    lines: list[tuple[str, str]] = []
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(row)
        lines.append((row[0], buffer.getvalue()))
    for name in real_files:
        for line in (FIXTURES / name).read_text().splitlines()[1:]:
            lines.append((line.split(",", 1)[0], line + "\n"))
    lines.sort(key=lambda item: item[0])
    head = ",".join(header) + "\n" if header else ""
    return (head + "".join(line for _, line in lines)).encode()


def render(records: list[ImageRecord], url: str) -> dict[str, bytes]:
    """Every metadata file of every version, keyed by its official path under ``base_url``."""
    files: dict[str, bytes] = {}
    classes = (FIXTURES / "class-descriptions-boxable.csv").read_bytes()
    files["2018_04/class-descriptions-boxable.csv"] = classes
    files["v5/class-descriptions-boxable.csv"] = classes
    files["v7/oidv7-class-descriptions-boxable.csv"] = b"LabelName,DisplayName\n" + classes
    files["2018_04/bbox_labels_600_hierarchy.json"] = (FIXTURES / "bbox_labels_600_hierarchy.json").read_bytes()
    for subset in ("train", "validation", "test"):
        v4_path = LAYOUTS["v4"].boxes[subset]
        files[v4_path] = _csv(BOX_COLUMNS, _box_rows(records, subset, _fixed6, False), _REAL_ROWS.get(v4_path, []))
        image_path = LAYOUTS["v4"].images[subset]
        files[image_path] = _csv(IMAGE_COLUMNS, _image_rows(records, subset, url), _REAL_ROWS.get(image_path, []))
    for subset in ("validation", "test"):
        path = LAYOUTS["v5"].boxes[subset]
        files[path] = _csv(BOX_COLUMNS, _box_rows(records, subset, _float32, False), _REAL_ROWS.get(path, []))
    v6_path = LAYOUTS["v6"].boxes["train"]
    files[v6_path] = _csv(BOX_COLUMNS + XCLICK_COLUMNS, _box_rows(records, "train", _fixed6, True), _REAL_ROWS[v6_path])
    return files


def truth(records: list[ImageRecord], url: str, cvdf_url: str) -> pd.DataFrame:
    """One row per image: what it shows, its fault, and what the pipeline should make of it."""
    names = display_names()
    rows = []
    for r in records:
        fault = FAULTS.get(r.fault)
        rows.append({
            "ImageID": r.ImageID,
            "Subset": r.Subset,
            "labels": [names[b.LabelName] for b in r.boxes],
            "LabelNames": [b.LabelName for b in r.boxes],
            "fault": r.fault,
            "expected_status": fault.expected_status if fault else "ok",
            "expected_reject": _expected_reject(r),
            "expected_audit": fault.expected_audit if fault else "",
            "OriginalURL": original_url(r, url),
            "cvdf_url": f"{cvdf_url}/{r.Subset}/{r.ImageID}.jpg",
            "Rotation": float("nan") if r.Rotation is None else r.Rotation,
            "duplicate_of": r.duplicate_of,
            "detail": fault.detail if fault else "",
        })
    frame = pd.DataFrame(rows)
    frame.attrs["upright"] = UPRIGHT
    return frame


def _expected_reject(record: ImageRecord) -> str:
    """The clean stage's verdict; of a duplicate pair only the copy is the one to drop."""
    fault = FAULTS.get(record.fault)
    if fault is None:
        return ""
    if record.fault in ("duplicate", "near_duplicate") and not record.duplicate_of:
        return ""
    return fault.expected_reject
