"""The layout of the WebDataset tar shards and their ``index.json``: what the shards stage writes and training reads.

``data/shards/{train,val,test}-NNNNNN.tar`` hold, for every image of a split in path order, three members:
``<key>.jpg`` (the crop's bytes; ``.png``/``.webp`` for such files), ``<key>.cls`` (the class index in the
model's output order, ASCII) and ``<key>.json`` (``label``, ``dirname``, ``path``); ``<key>`` is
``<class folder>/<file stem>``. ``index.json`` lists each split's shards (name, bytes, sha256), its image
count and a fingerprint of the split's files, so training uses shards only when they hold the splits on
disk. No torch here: the shards stage starts without it. The reader is :mod:`.shards`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.base.errors import UserError
from pipeline.core.base.paths import IMAGE_SUFFIXES
from pipeline.core.learn.folders import Classes, Split, list_split

#: the index beside the shards
INDEX_NAME = "index.json"
#: bumped when the layout changes; a reader refuses other versions (2: each shard's sha256 in the index)
SHARDS_FORMAT = 2
#: what fixes shards that are not what the index says: the stage rebuilds them from data/splits
RE_RUN = "re-run the shards stage (python -m pipeline.stages.shards)"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: image member extension per class-folder suffix (``paths.IMAGE_SUFFIXES``; WebDataset's usual names)
IMAGE_EXTENSIONS = {suffix: "jpg" if suffix == ".jpeg" else suffix[1:] for suffix in IMAGE_SUFFIXES}


def shard_pattern(split: str) -> str:
    """``train-%06d.tar``: the split's shards, numbered in the order their images were written."""
    return f"{split}-%06d.tar"


def sample_key(relative: Path) -> str:
    """``<class folder>/<stem>`` for ``<split>/<class folder>/<stem>.<ext>``; dots in the stem become ``_``.

    WebDataset splits a member's name at the first dot of its last part, so a key must have none there.
    """
    return f"{relative.parent.name}/{relative.stem.replace('.', '_')}"


def file_sha256(path: Path) -> str:
    """A shard's sha256, read in blocks (a shard can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(split: Split, root: Path) -> str:
    """sha256 of every file's path (relative to ``root``), size and class: what the shards must match.
    (Paths as text and ``os.stat``: at 100k crops, pathlib's ``relative_to`` and ``stat`` cost seconds.)"""
    digest = hashlib.sha256()
    prefix = f"{root}{os.sep}"
    for path, target in zip(split.paths, split.targets, strict=True):
        text = str(path)
        relative = text[len(prefix):] if text.startswith(prefix) else path.relative_to(root).as_posix()
        digest.update(_fingerprint_line(relative, os.stat(text).st_size, target))
    return digest.hexdigest()


def folders_fingerprint(root: Path, name: str, classes: Classes) -> str:
    """:func:`fingerprint` of ``read_split(root, name, classes)`` from the file names, no Path per file: the
    package stage checks the shards against 100k crops it does not otherwise read."""
    digest = hashlib.sha256()
    for folder in list_split(root, name, classes):
        relative, base = f"{name}/{folder.path.name}/", f"{folder.path}{os.sep}"
        for file in folder.names:
            digest.update(_fingerprint_line(relative + file, os.stat(base + file).st_size, folder.target))
    return digest.hexdigest()


def _fingerprint_line(relative: str, size: int, target: int) -> bytes:
    return f"{relative}\t{size}\t{target}\n".encode()


def holds_split(index: ShardIndex | None, split: Split, root: Path, classes: Classes) -> bool:
    """Whether ``index`` describes exactly ``split`` of ``root``: the same classes, and the same files, sizes
    and classes (its fingerprint). The one test of shards against the splits on disk: training streams them
    only then, and the package stage publishes them only then (:func:`holds_folders`)."""
    return _holds(index, split.name, classes, lambda: fingerprint(split, root))


def holds_folders(index: ShardIndex | None, root: Path, name: str, classes: Classes) -> bool:
    """:func:`holds_split` for the split ``name`` of ``root`` as it is on disk, listed by names only."""
    return _holds(index, name, classes, lambda: folders_fingerprint(root, name, classes))


def _holds(index: ShardIndex | None, name: str, classes: Classes, fingerprint_of: Callable[[], str]) -> bool:
    entry = index.splits.get(name) if index else None
    return entry is not None and index.dirnames == classes.dirnames and entry.fingerprint == fingerprint_of()


@dataclass(frozen=True)
class SplitShards:
    """One split's shards: files (in order), their sizes and sha256s, its image count and the split's
    fingerprint."""

    files: list[str]
    sizes: list[int]
    sha256s: list[str]
    images: int
    fingerprint: str


@dataclass(frozen=True)
class ShardIndex:
    """``index.json``: the classes (output order) and each split's shards."""

    dirnames: list[str]
    labels: list[str]
    splits: dict[str, SplitShards]

    def to_json(self) -> dict:
        return {"format": SHARDS_FORMAT, "dirnames": self.dirnames, "labels": self.labels,
                "splits": {name: {"shards": [{"name": f, "bytes": b, "sha256": h}
                                             for f, b, h in zip(s.files, s.sizes, s.sha256s, strict=True)],
                                  "images": s.images, "fingerprint": s.fingerprint}
                           for name, s in self.splits.items()}}


def read_index(folder: Path) -> ShardIndex | None:
    """The index in ``folder``, or None when there is none; a malformed one is a :class:`UserError`."""
    path = folder / INDEX_NAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != SHARDS_FORMAT:
            raise UserError(f"{path}: shard index format {raw.get('format')!r}, expected {SHARDS_FORMAT}: {RE_RUN}")
        splits = {str(name): _split_entry(entry) for name, entry in raw["splits"].items()}
        index = ShardIndex(_texts(raw["dirnames"]), _texts(raw["labels"]), splits)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path}: not a shard index ({type(exc).__name__}: {exc}); {RE_RUN}") from None
    return index


def _split_entry(entry: dict) -> SplitShards:
    """One split of the index, every value of its type: a doctored number (``"bytes": 1e400``) is refused."""
    shards = entry["shards"]
    if not isinstance(shards, list):
        raise TypeError("shards must be a list")
    names = [_shard_name(s["name"]) for s in shards]
    sizes = [_count(s["bytes"], "bytes") for s in shards]
    sha256s = [_sha256(s["sha256"]) for s in shards]
    fingerprint = entry["fingerprint"]
    if not isinstance(fingerprint, str):
        raise TypeError("fingerprint must be text")
    return SplitShards(names, sizes, sha256s, _count(entry["images"], "images"), fingerprint)


def _shard_name(name: object) -> str:
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".tar"):
        raise ValueError(f"shard name {name!r} is not a plain .tar file name")
    return name


def _count(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{what} must be a whole number of at least 0, got {value!r}")
    return value


def _sha256(value: object) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ValueError(f"sha256 must be 64 lower-case hex digits, got {value!r}")
    return value


def _texts(values: object) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TypeError("dirnames and labels must be lists of text")
    return values
