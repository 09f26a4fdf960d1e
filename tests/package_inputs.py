"""Inputs of the package stage, written directly to the contracts in docs/architecture.md.

A few small JPEGs in ``data/splits/{train,val,test}/<label>/``, ``splits.parquet``, ``labels.json``, the
shards stage's tars of them (``data/shards``, written by the stage's own writer), the selected / images /
clean manifests and, with ``model=True``, the train and evaluate stages' files
(a stand-in ``models/model.pt``, metrics, dvclive curves, confusion rows), so package and pull tests know
exactly what must come out. Photo 0 has two boxes (two crops, one attribution row); photo 1's author
starts with ``=`` (a spreadsheet formula unless escaped); every third photo is CC BY-SA 2.0, the rest
CC BY 2.0.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from PIL import Image

from pipeline.core.base.io import write_parquet
from pipeline.core.base.params import ShardsParams
from pipeline.core.base.safe import label_dirname
from pipeline.stages.shards.stage import write_shards

LABELS = ("Hamburger", "Submarine sandwich")
#: crops per label in each split
PER_SPLIT = {"train": 3, "val": 1, "test": 1}
#: the logical keys of the dataset package that are copies of input files -> their path under the workspace
COPIED = {
    "manifests/selected.parquet": "data/selected.parquet",
    "manifests/images.parquet": "data/images/manifest.parquet",
    "manifests/clean.parquet": "data/clean/manifest.parquet",
    "manifests/audit.parquet": "data/audit/ledger.parquet",
}
#: the same for the model package
MODEL_COPIED = {
    "model.pt": "models/model.pt",
    "metrics/train.json": "metrics/train.json",
    "metrics/eval.json": "metrics/eval.json",
    "plots/confusion.csv": "plots/confusion.csv",
    "dvclive/metrics.json": "dvclive/metrics.json",
    "dvclive/plots/metrics/train_loss.tsv": "dvclive/plots/metrics/train_loss.tsv",
    "dvclive/plots/metrics/val_accuracy.tsv": "dvclive/plots/metrics/val_accuracy.tsv",
}
BY = "https://creativecommons.org/licenses/by/2.0/"
BY_SA = "https://creativecommons.org/licenses/by-sa/2.0/"


def image_id(i: int) -> str:
    return hashlib.sha256(f"photo{i}".encode()).hexdigest()[:16]


def jpeg(name: str) -> bytes:
    digest = hashlib.sha256(name.encode()).digest()
    buf = io.BytesIO()
    Image.new("RGB", (24, 20), tuple(digest[:3])).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def crops(scale: int = 1) -> list[dict[str, Any]]:
    """One row per crop: photo number, box, label, split (photo 0 gives two crops of the first label);
    ``scale`` times as many photos per split and label."""
    rows, photo = [], 0
    for label in LABELS:
        for split, n in PER_SPLIT.items():
            for _ in range(n * scale):
                rows.append({"photo": photo, "box": 0, "label": label, "split": split})
                photo += 1
    rows.append({"photo": 0, "box": 1, "label": LABELS[0], "split": rows[0]["split"]})
    return rows


def photo_credits(i: int) -> dict[str, str]:
    return {
        "OriginalURL": f"https://farm1.staticflickr.com/1/{i}_abc_o.jpg",
        "OriginalLandingURL": f"https://www.flickr.com/photos/user{i}/{1000 + i}",
        "License": BY_SA if i % 3 == 2 else BY,
        "AuthorProfileURL": f"https://www.flickr.com/people/user{i}/",
        "Author": "=HYPERLINK(\"x\")" if i == 1 else f"Photographer {i}",
        "Title": f"Lunch {i}",
    }


def write_inputs(root: Path, package: dict[str, Any], eval_top1: float = 0.75, model: bool = False,
                 labels: tuple[str, str] = LABELS, scale: int = 1) -> None:
    """Everything ``python -m pipeline.stages.package`` reads, under ``root`` (params.yaml included);
    ``labels`` renames the two classes (the crops stay the same); ``scale`` multiplies the photos."""
    (root / "params.yaml").write_text(yaml.safe_dump({"labels": list(labels), "package": package}))
    splits_dir = root / "data/splits"
    if splits_dir.exists():
        shutil.rmtree(splits_dir)
    renamed = dict(zip(LABELS, labels))
    split_rows, selected, images, clean = [], [], [], []
    for crop in crops(scale):
        crop = {**crop, "label": renamed[crop["label"]]}
        iid, dirname = image_id(crop["photo"]), label_dirname(crop["label"])
        rel = f"{crop['split']}/{dirname}/{iid}_{crop['box']}.jpg"
        (splits_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (splits_dir / rel).write_bytes(jpeg(rel))
        split_rows.append({"ImageID": iid, "BoxIndex": crop["box"], "Label": crop["label"], "split": crop["split"],
                           "path": rel, "group": iid})
        selected.append({"ImageID": iid, "Subset": "train", "BoxIndex": crop["box"], "Label": crop["label"],
                         "LabelName": f"/m/{dirname.lower()}", "XMin": 0.1, "XMax": 0.9, "YMin": 0.1, "YMax": 0.9,
                         **photo_credits(crop["photo"])})
        clean.append({"ImageID": iid, "BoxIndex": crop["box"], "Label": crop["label"], "keep": True,
                      "reject_reason": "", "crop_path": f"{dirname}/{iid}_{crop['box']}.jpg"})
        images.append({"ImageID": iid, "Subset": "train", "status": "ok", "path": f"{iid}.jpg"})
    write_parquet(pd.DataFrame(split_rows), splits_dir / "splits.parquet")
    (splits_dir / "labels.json").write_text(json.dumps({label_dirname(x): x for x in labels}, indent=2))
    write_parquet(pd.DataFrame(selected), root / "data/selected.parquet")
    write_parquet(pd.DataFrame(images).drop_duplicates("ImageID"), root / "data/images/manifest.parquet")
    write_parquet(pd.DataFrame(clean), root / "data/clean/manifest.parquet")
    ledger = pd.DataFrame(clean)[["ImageID", "BoxIndex", "Label", "crop_path"]].assign(decision="kept", issue="")
    write_parquet(ledger, root / "data/audit/ledger.parquet")
    write_shards_of_splits(root)
    if model:
        write_model_outputs(root, eval_top1, labels)


def write_shards_of_splits(root: Path) -> None:
    """``data/shards`` of ``data/splits`` as they are now, as the shards stage writes them (default params)."""
    shards = root / "data/shards"
    if shards.exists():
        shutil.rmtree(shards)
    shards.mkdir(parents=True)
    write_shards(root / "data/splits", shards, ShardsParams())


def write_model_outputs(root: Path, eval_top1: float, labels: tuple[str, str] = LABELS) -> None:
    """What the train and evaluate stages leave for the package stage (a stand-in for the model's bytes)."""
    per_class = {label: {"f1": 0.8} for label in labels}
    files = {
        "models/model.pt": hashlib.sha256(f"model {eval_top1}".encode()).digest() * 64,
        "metrics/train.json": json.dumps({"epochs": 2, "val_accuracy": 0.7}).encode(),
        "metrics/eval.json": json.dumps({"top1": eval_top1, "per_class": per_class}).encode(),
        "plots/confusion.csv": b"actual,predicted\nHamburger,Hamburger\nSubmarine sandwich,Hamburger\n",
        "dvclive/metrics.json": json.dumps({"train_loss": 0.5, "val_accuracy": 0.7, "step": 2}).encode(),
        "dvclive/plots/metrics/train_loss.tsv": b"step\ttrain_loss\n1\t0.9\n2\t0.5\n",
        "dvclive/plots/metrics/val_accuracy.tsv": b"step\tval_accuracy\n1\t0.5\n2\t0.7\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def expected_sources(root: Path) -> dict[str, Path]:
    """Logical key -> input file, for every dataset package file that is a plain copy of an input: the split
    tables, every shard and its index, the copied manifests (no class folder: the shards hold the crops)."""
    found = {f"splits/{name}": root / "data/splits" / name for name in ("splits.parquet", "labels.json")}
    found.update({f"shards/{p.name}": p for p in sorted((root / "data/shards").iterdir())})
    found.update({key: root / rel for key, rel in COPIED.items()})
    return found


def expected_pulled(root: Path) -> dict[str, Path]:
    """Relative path -> input file, for every file a pull of the dataset gives that is a plain copy of an
    input: the split stage's folder (class folders unpacked from the shards, the split tables) and the
    copied manifests; no shard (they are unpacked, then not kept)."""
    splits_dir = root / "data/splits"
    found = {f"splits/{p.relative_to(splits_dir).as_posix()}": p for p in splits_dir.rglob("*") if p.is_file()}
    found.update({key: root / rel for key, rel in COPIED.items()})
    return found


def expected_model_sources(root: Path) -> dict[str, Path]:
    """Logical key -> input file, for every model package file that is a plain copy of an input."""
    return {key: root / rel for key, rel in MODEL_COPIED.items()}


def run(cwd: Path, env: dict[str, str], module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m <module> args`` in ``cwd``, as a user would run it; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The command's error line, after checking it failed cleanly: no traceback, one ``error:`` line last."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, result.stderr
    return lines[-1]
