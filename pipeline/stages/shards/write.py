"""The writer of the WebDataset tar shards (layout and index: :mod:`pipeline.core.learn.shard_index`).

Plain :mod:`tarfile`, as webdataset's ``ShardWriter`` writes them (members of a sample in sorted order, a
new tar after ``max_images`` images or once one holds ``max_bytes`` of members), so the stage needs no torch;
a fixed mtime, owner names and mode make the same files give byte-identical shards, wherever and whenever.
"""
from __future__ import annotations

import json
import tarfile
from io import BytesIO
from pathlib import Path

from pipeline.core.base.errors import UserError
from pipeline.core.base.progress import Progress
from pipeline.core.learn.folders import Classes, Split
from pipeline.core.learn.shard_index import (
    IMAGE_EXTENSIONS,
    SplitShards,
    file_sha256,
    fingerprint,
    sample_key,
    shard_pattern,
)

#: every member's mtime (2000-01-01 UTC): fixed, so equal inputs give equal bytes; not 0, which tar tools
#: warn about when extracting
MTIME = 946684800
#: members extract as ordinary readable files
MODE = 0o644


def check_unique_keys(split: Split, root: Path) -> None:
    """Refuse two files of ``split`` that would share a sample key: the shards could not tell them apart."""
    seen: dict[str, Path] = {}
    for path in split.paths:
        key = sample_key(path.relative_to(root))
        if key in seen:
            raise UserError(f"{seen[key]} and {path} would both be the sample {key!r} in the shards (a key is the "
                            "class folder and the file name without its extension, dots as _): rename one of them, "
                            "then re-run the shards stage")
        seen[key] = path


def write_split_shards(split: Split, root: Path, classes: Classes, out: Path, max_images: int,
                       max_bytes: int) -> SplitShards:
    """``split`` (files under ``root``) as shards in ``out``, a new one after ``max_images`` images or once
    one holds ``max_bytes``; returns what the index records about them. The samples come in path order."""
    check_unique_keys(split, root)
    with _Shards(out, split.name, max_images, max_bytes) as sink, \
            Progress(len(split), f"shards {split.name}", "img", leave=False) as bar:
        for path, target in zip(split.paths, split.targets, strict=True):
            relative = path.relative_to(root)
            meta = {"dirname": classes.dirnames[target], "label": classes.labels[target], "path": relative.as_posix()}
            sink.write(sample_key(relative), {
                IMAGE_EXTENSIONS[path.suffix.lower()]: path.read_bytes(),
                "cls": str(target).encode(),
                "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
            })
            bar.update()
    written = sink.written
    return SplitShards(written, [(out / f).stat().st_size for f in written], [file_sha256(out / f) for f in written],
                       len(split), fingerprint(split, root))


class _Shards:
    """Samples into ``<split>-000000.tar``, ``-000001.tar``, ... in ``out``: a new tar once one holds
    ``max_images`` samples or ``max_bytes`` of members (checked before each sample, as webdataset does)."""

    def __init__(self, out: Path, split: str, max_images: int, max_bytes: int) -> None:
        self.out, self.pattern, self.max_images, self.max_bytes = out, shard_pattern(split), max_images, max_bytes
        self.written: list[str] = []
        self.tar: tarfile.TarFile | None = None
        self.count = self.size = 0

    def __enter__(self) -> _Shards:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tar is not None:
            self.tar.close()

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """One sample: its members ``<key>.<ext>`` in sorted order, each with the fixed mtime, mode and owners."""
        if self.tar is None or self.count >= self.max_images or self.size >= self.max_bytes:
            self._next()
        for ext in sorted(members):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(members[ext]), MTIME, MODE, "", ""
            self.tar.addfile(info, BytesIO(members[ext]))
            self.size += info.size
        self.count += 1

    def _next(self) -> None:
        if self.tar is not None:
            self.tar.close()
        name = self.pattern % len(self.written)
        self.tar = tarfile.open(self.out / name, "w|")
        self.written.append(name)
        self.count = self.size = 0
