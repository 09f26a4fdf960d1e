"""A dataset package's shards back into class folders: what ``python -m pipeline.pull`` hands a user.

The package carries every crop once, in the WebDataset tars the shards stage wrote (layout:
:mod:`.shard_index`); this writes each sample's image to ``<out>/<split>/<class folder>/<file>``, the path
its ``.json`` member names, so ``<out>/train`` is a ``torchvision.datasets.ImageFolder`` again, byte for
byte the split stage's files.

The tars come from a registry, so they are read as untrusted: tarfile extracts nothing itself (no links,
devices or absolute paths can land anywhere); only plain-file members of the expected kinds are read, none
over :data:`MAX_IMAGE` (:data:`MAX_JSON` for the small members); a sample's path must be
``<this split>/<a class folder of the index>/<a plain file name>`` matching the sample's own key; a file is
created, never overwritten; each tar must be the one the index lists (size and sha256), and each split must
hold the index's image count, no more. Anything else is a :class:`UserError` naming the tar.
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NoReturn

from pipeline.core.base.errors import PipelineFailure, UserError
from pipeline.core.base.paths import SPLIT_NAMES
from pipeline.core.base.progress import Progress
from pipeline.core.base.safe import printable
from pipeline.core.learn.shard_index import (
    IMAGE_EXTENSIONS,
    INDEX_NAME,
    ShardIndex,
    SplitShards,
    read_index,
    sample_key,
)

#: the largest image member unpacked (a crop is a few KiB to a few MiB)
MAX_IMAGE = 64 * 2**20
#: the largest ``.json`` or ``.cls`` member read
MAX_JSON = 64 * 2**10
_SMALL_MEMBERS = ("cls", "json")
_IMAGE_MEMBERS = frozenset(IMAGE_EXTENSIONS.values())


@dataclass(frozen=True)
class Unpacked:
    """What was unpacked: images and the tars they came from."""

    images: int
    shards: int


def unpack_shards(folder: Path, out: Path) -> Unpacked:
    """Every shard that ``folder``'s index lists, as class folders under ``out`` (which holds none yet)."""
    index = read_index(folder)
    if index is None:
        raise UserError(f"{folder / INDEX_NAME} not found: not a dataset package with shards")
    for name in index.dirnames:
        _plain_name(name, f"{folder / INDEX_NAME}: class folder")
    total = sum(entry.images for entry in index.splits.values())
    with Progress(total, "unpack", "img") as bar:
        for split, entry in index.splits.items():
            if split not in SPLIT_NAMES:
                raise UserError(f"{folder / INDEX_NAME}: unknown split {printable(split)!r}")
            _unpack_split(folder, split, entry, index, out, bar)
    return Unpacked(total, sum(len(entry.files) for entry in index.splits.values()))


def _unpack_split(folder: Path, split: str, entry: SplitShards, index: ShardIndex, out: Path, bar: Progress) -> None:
    written = 0
    for name, size, sha256 in zip(entry.files, entry.sizes, entry.sha256s, strict=True):
        tar = _Tar(folder / name, split, set(index.dirnames), out, entry.images - written)
        written += tar.unpack(bar)
        tar.check_is(size, sha256)
    if written != entry.images:
        raise UserError(f"{folder / INDEX_NAME}: {split} should hold {entry.images} images, its shards hold {written}")


class _Tar:
    """One shard, read once as a stream (hashed as it goes), its samples written under ``out``."""

    def __init__(self, path: Path, split: str, dirnames: set[str], out: Path, room: int) -> None:
        self.path, self.split, self.dirnames, self.out, self.room = path, split, dirnames, out, room
        self.reader: _HashingReader | None = None

    def unpack(self, bar: Progress) -> int:
        """Write the tar's samples; returns how many."""
        written = 0
        try:
            with self.path.open("rb") as raw:
                self.reader = _HashingReader(raw)
                with tarfile.open(fileobj=self.reader, mode="r|") as tar:
                    for key, members in self._samples(tar):
                        if written == self.room:
                            self._refuse("more images than the index says its split holds")
                        self._write(key, members)
                        written += 1
                        bar.update()
                self.reader.drain()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(f"{self.path.name}: not a readable tar ({exc})") from None
        return written

    def check_is(self, size: int, sha256: str) -> None:
        """Refuse a tar other than the one the index lists (read whole by :meth:`unpack`)."""
        if self.reader is None or self.reader.size != size or self.reader.digest.hexdigest() != sha256:
            self._refuse(f"not the shard {INDEX_NAME} lists (its size or sha256 differs)")

    def _samples(self, tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
        """``(key, {extension: bytes})`` per sample: its members are consecutive, as the shards stage wrote them."""
        key, members = None, {}
        for member in tar:
            member_key, ext = self._split_name(member)
            if member_key != key:
                if key is not None:
                    yield key, members
                key, members = member_key, {}
            if ext in members:
                self._refuse(f"member {printable(member.name)!r} appears twice")
            members[ext] = self._read(tar, member)
        if key is not None:
            yield key, members

    def _split_name(self, member: tarfile.TarInfo) -> tuple[str, str]:
        """A member's sample key and extension (WebDataset's rule: the first dot of its last part), after
        checking it is a plain file of a kind a sample holds, not over its size cap."""
        shown = printable(member.name)
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
            self._refuse(f"member {shown!r} is not a plain file")
        folder, _, base = member.name.rpartition("/")
        stem, _, ext = base.partition(".")
        if ext not in _IMAGE_MEMBERS and ext not in _SMALL_MEMBERS:
            self._refuse(f"member {shown!r} is not an image, .cls or .json")
        cap = MAX_JSON if ext in _SMALL_MEMBERS else MAX_IMAGE
        if member.size > cap:
            self._refuse(f"member {shown!r} is {member.size} bytes, over the {cap} allowed")
        return f"{folder}/{stem}", ext

    def _read(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
        fh = tar.extractfile(member)
        data = fh.read() if fh is not None else b""
        if len(data) != member.size:
            self._refuse(f"member {printable(member.name)!r} is cut short")
        return data

    def _write(self, key: str, members: dict[str, bytes]) -> None:
        """The sample's image at the path its ``.json`` names, once that path is checked."""
        images = [ext for ext in members if ext in _IMAGE_MEMBERS]
        if len(images) != 1 or "json" not in members:
            self._refuse(f"sample {printable(key)!r} needs one image and a .json")
        relative = self._relative_path(key, members["json"], images[0])
        target = self.out.joinpath(*relative.parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("xb") as fh:  # never over a file: two samples naming one path are refused
                fh.write(members[images[0]])
        except FileExistsError:
            self._refuse(f"{printable(str(relative))!r} is taken (by another sample, or a file in its way)")
        except (NotADirectoryError, IsADirectoryError):  # a file of the package where a folder goes, or back
            self._refuse(f"{printable(str(relative))!r} is taken (by another sample, or a file in its way)")
        except OSError as exc:  # the disk is full, ...: not the package's fault
            raise PipelineFailure(f"cannot write {printable(str(target))}: {exc.strerror}; nothing unpacked") from None

    def _relative_path(self, key: str, raw: bytes, image_ext: str) -> PurePosixPath:
        """``<split>/<class folder>/<file>`` from the sample's ``.json``, or a refusal."""
        try:
            meta = json.loads(raw)
            path, dirname = meta["path"], meta["dirname"]
        except (ValueError, TypeError, KeyError):
            self._refuse(f"sample {printable(key)!r}: its .json has no path and dirname")
        if not isinstance(path, str) or not isinstance(dirname, str):
            self._refuse(f"sample {printable(key)!r}: its .json has no path and dirname")
        relative = PurePosixPath(path)
        shown = printable(path)
        if len(relative.parts) != 3 or relative.as_posix() != path or relative.parts[0] != self.split:
            self._refuse(f"sample path {shown!r} is not {self.split}/<class folder>/<file>")
        _, folder, name = relative.parts
        for part, what in ((folder, "class folder"), (name, "file name")):
            _plain_name(part, f"{self.path.name}: sample path {shown!r}: {what}")
        if folder != dirname or folder not in self.dirnames:
            self._refuse(f"sample path {shown!r}: {printable(folder)!r} is not a class folder of the index")
        if IMAGE_EXTENSIONS.get(relative.suffix.lower()) != image_ext or sample_key(relative) != key:
            self._refuse(f"sample path {shown!r} does not match its member {printable(key)}.{image_ext}")
        return relative

    def _refuse(self, why: str) -> NoReturn:
        raise UserError(f"{self.path.name}: {why}; the shards are not as the shards stage writes them, nothing unpacked")


def _plain_name(name: str, what: str) -> None:
    """Refuse a name that is not one plain file or folder name (no separator, no ``..``, not hidden)."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or not name.isprintable():
        raise UserError(f"{what} {printable(name)!r} is not a plain name; nothing unpacked")


class _HashingReader:
    """A file read forward only, hashing every byte it hands out (the tar's sha256 in the same read)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.digest, self.size = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read what tarfile left after the end-of-archive marker (padding), so the hash covers the file."""
        while self.read(1 << 20):
            pass
