"""A split's class folders as files and class indices: what training, evaluation and the shards stage read.

Apart from :mod:`.data` because it needs no torch: the shards stage (which only copies files into tars)
starts without importing it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.base.errors import UserError
from pipeline.core.base.paths import IMAGE_SUFFIXES
from pipeline.core.base.safe import printable

#: name of the ``{label_dirname: display name}`` file in the splits folder
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class Classes:
    """The classes, in the order of the model's outputs (the train split's folders, sorted)."""

    dirnames: list[str]
    labels: list[str]  # display names (from labels.json, else the folder names)


@dataclass(frozen=True)
class Split:
    """The image files of one split and their class indices."""

    name: str
    paths: list[Path]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.paths)


def read_classes(root: Path) -> Classes:
    """Classes from ``root/train``'s folders, named by ``root/labels.json`` when the split stage wrote it."""
    train = root / "train"
    if not train.is_dir():
        raise UserError(f"{train} not found: run the split stage first (see dvc.yaml)")
    dirnames = sorted(text_name(d) for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(dirnames) < 2:
        raise UserError(f"{train}: need at least two class folders to train a classifier, found {len(dirnames)}")
    names: dict[str, str] = {}
    labels_file = root / LABELS_FILE
    if labels_file.is_file():
        try:
            names = json.loads(labels_file.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{labels_file}: not valid JSON ({exc})") from None
        if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
            raise UserError(f"{labels_file}: expected a mapping of folder name to display name")
    return Classes(dirnames, [names.get(d, d) for d in dirnames])


@dataclass(frozen=True)
class ClassFolder:
    """One class folder of a split: where it is, its class index, its image files' names (sorted)."""

    path: Path
    target: int
    names: list[str]


def list_split(root: Path, name: str, classes: Classes) -> list[ClassFolder]:
    """The class folders under ``root/name/`` with their image names, sorted; refuses a folder that is not
    a class of the train split, a name that is not UTF-8 and a split without images."""
    folder = root / name
    if not folder.is_dir():
        raise UserError(f"{folder} not found: run the split stage first (see dvc.yaml)")
    index = {d: i for i, d in enumerate(classes.dirnames)}
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if text_name(sub) not in index:
            raise UserError(f"{sub}: class folder missing from the train split; re-run the split stage")
        names = image_names(sub)
        for file in names:
            if not file.isascii():
                text_name(sub / file)  # refuses a name that is not UTF-8
        found.append(ClassFolder(sub, index[sub.name], names))
    if not any(f.names for f in found):
        raise UserError(f"{folder}: no images; check the split fractions in params.yaml")
    return found


def read_split(root: Path, name: str, classes: Classes) -> Split:
    """Every image under ``root/name/<class>/``, sorted, so batches and reports are repeatable."""
    listed = list_split(root, name, classes)
    return Split(name, [f.path / file for f in listed for file in f.names], [f.target for f in listed for _ in f.names])


def image_names(folder: Path) -> list[str]:
    """The names of ``folder``'s image files (``IMAGE_SUFFIXES``, any case), sorted. One ``scandir`` and names
    as text: no stat per file where the file system gives the entry's type, no Path per name until wanted,
    which at 100k crops is seconds (the package stage and training list every split)."""
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries if _suffix(entry.name).lower() in IMAGE_SUFFIXES
                      and entry.is_file())


def _suffix(name: str) -> str:
    """``Path(name).suffix`` without making a Path: from the last dot, unless the name starts or ends with it."""
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def text_name(path: Path) -> str:
    """``path``'s name, which must be text: a name with bytes that are not UTF-8 cannot go into a shard, its
    index, a report or a CSV, so it is refused, naming the file to rename."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{printable(str(path))}: the name is not UTF-8 text; rename it (the split stage names "
                        "crops <ImageID>_<BoxIndex>.jpg in folders named after the labels)") from None
    return path.name
