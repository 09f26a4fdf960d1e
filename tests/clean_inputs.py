"""Inputs of the split stage built directly to the contracts in docs/architecture.md (crop, clean, download).

Split and report tests use these instead of running crop and clean, so each rule is tested on data
whose groups, labels and rejections are known exactly.
"""
from __future__ import annotations

import hashlib
import random
from contextlib import chdir
from pathlib import Path

import pandas as pd
import yaml
from PIL import Image, ImageDraw

from pipeline.core.base import paths
from pipeline.core.base.io import write_parquet
from pipeline.core.base.safe import label_dirname

#: reasons whose crop exists on disk (the photo was fine, the crop was judged); others are photo-level
CROP_REASONS = {"", "too_small", "duplicate", "near_duplicate"}


def image_id(i: int) -> str:
    return f"{i:016x}"


def row(i: int, box: int, label: str, reason: str = "", dup_group: str = "", detail: str = "") -> dict:
    """One clean-manifest row for box ``box`` of image number ``i``."""
    return {"ImageID": image_id(i), "BoxIndex": box, "Label": label, "reject_reason": reason,
            "dup_group": dup_group, "detail": detail}


def synthetic_rows(n_images: int, labels: tuple[str, ...], seed: int = 0) -> list[dict]:
    """Kept crops of ``n_images`` photos: 1-3 boxes each, a fifth of the photos holding two labels,
    and near-duplicate groups tying some photos together in pairs."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_images):
        first = labels[i % len(labels)]
        dup = f"dup{i // 2}" if i % 10 in (2, 3) else ""
        for box in range(rng.randint(1, 3)):
            label = labels[(i + 1) % len(labels)] if box == 1 and i % 5 == 0 else first
            rows.append(row(i, box, label, dup_group=dup))
    return rows


def crop_picture(name: str, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A small deterministic picture with a colour and a mark derived from ``name``."""
    digest = hashlib.sha256(name.encode()).digest()
    im = Image.new("RGB", size, tuple(digest[:3]))
    ImageDraw.Draw(im).rectangle((4, 4, 4 + digest[3] % 30, 4 + digest[4] % 24), fill=tuple(digest[5:8]))
    return im


def write_inputs(root: Path, rows: list[dict], split: dict | None = None) -> None:
    """Write params.yaml, data/crops (+ manifest), data/clean/manifest.parquet and data/images under ``root``.

    Photo-level rejections get a file in data/images: ``placeholder`` a PNG, ``corrupt`` a JPEG that does
    not decode, ``changed`` a JPEG; ``not_downloaded`` gets nothing.
    """
    params = {"split": {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 0, "min_per_label": 3, **(split or {})}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    clean, images = [], {}
    for r in rows:
        name = f"{r['ImageID']}_{r['BoxIndex']}"
        crop_path = ""
        if r["reject_reason"] in CROP_REASONS:
            crop_path = f"{label_dirname(r['Label'])}/{name}.jpg"
            (root / paths.CROPS_DIR / crop_path).parent.mkdir(parents=True, exist_ok=True)
            crop_picture(name).save(root / paths.CROPS_DIR / crop_path, quality=90)
        images[r["ImageID"]] = _write_photo(root, r["ImageID"], r["reject_reason"])
        clean.append({
            "ImageID": r["ImageID"], "Subset": "train", "BoxIndex": r["BoxIndex"], "Label": r["Label"],
            "LabelName": "/m/" + label_dirname(r["Label"]).lower(), "download_status": "ok",
            "crop_path": crop_path, "width": 48 if crop_path else 0, "height": 40 if crop_path else 0,
            "status": "ok" if crop_path else "corrupt", "reason": "",
            "keep": r["reject_reason"] == "", "reject_reason": r["reject_reason"], "detail": r["detail"],
            "sha256": "", "image_phash": "", "dup_group": r["dup_group"],
        })
    write_parquet(pd.DataFrame(clean), root / paths.CLEAN_MANIFEST)
    write_parquet(pd.DataFrame([{"ImageID": k, "Subset": "train", "status": "ok", "path": v}
                                for k, v in images.items()]), root / paths.IMAGES_MANIFEST)
    write_ledger(root, rows)
    authors = {r["ImageID"]: r.get("author", "") for r in rows}
    write_parquet(pd.DataFrame({"ImageID": list(authors), "Author": list(authors.values()),
                                "AuthorProfileURL": ""}), root / paths.SELECTED)


def write_ledger(root: Path, rows: list[dict]) -> None:
    """The audit's ledger for the kept rows: ``kept``, or ``rejected`` for a row with an ``audit`` issue."""
    kept = [r for r in rows if r["reject_reason"] == ""]
    write_parquet(pd.DataFrame({
        "ImageID": [r["ImageID"] for r in kept], "BoxIndex": [r["BoxIndex"] for r in kept],
        "Label": [r["Label"] for r in kept],
        "decision": ["rejected" if r.get("audit") else "kept" for r in kept],
        "issue": [r.get("audit", "") for r in kept],
    }), root / paths.AUDIT_LEDGER)


def _write_photo(root: Path, image: str, reason: str) -> str:
    """The downloaded photo of a row (relative to data/images), or '' when there is none."""
    if reason == "not_downloaded":
        return ""
    folder = root / paths.IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if reason == "placeholder":
        Image.new("RGB", (100, 80), (200, 200, 200)).save(folder / f"{image}.png")
        return f"{image}.png"
    if reason == "corrupt":
        (folder / f"{image}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
        return f"{image}.jpg"
    crop_picture(image, (160, 120)).save(folder / f"{image}.jpg")
    return f"{image}.jpg"


#: run a block with a folder as the working directory (stages read and write relative to it)
inside = chdir
