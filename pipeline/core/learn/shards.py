"""The splits as WebDataset tar shards: the layout, the index, the writer, and training batches from them.

``data/shards/{train,val,test}-NNNNNN.tar`` hold, for every image of a split in path order, three members:
``<key>.jpg`` (the crop's bytes, as they are in ``data/splits``; ``.png``/``.webp`` for such files),
``<key>.cls`` (the class index in the model's output order, ASCII) and ``<key>.json`` (``label``, ``dirname``,
``path`` relative to the splits folder). ``<key>`` is ``<class folder>/<file stem>``. This is the layout
img2dataset writes and ``webdataset.WebDataset(...).decode("pil").to_tuple("jpg", "cls")`` reads. Two files
whose keys would be the same (``a.b.jpg`` and ``a_b.jpg``, ``zz.JPG`` and ``zz.jpg``) would be one sample,
or two with one key, so the writer refuses them, naming both (:func:`check_unique_keys`).
``data/shards/index.json`` lists each split's shards (name, bytes, sha256), its image count and a
fingerprint of the split's files (relative path, size and class of each), so training uses shards only
when they hold the splits on disk, and only once every shard is, byte for byte, the one the shards stage
wrote (:func:`matching_shards`): a ``.cls`` flipped in place keeps a shard's size, never its sha256.

Streaming reads a tar sequentially, one large read per shard instead of one open and seek per image: the
form to use when the decoded cache does not fit and the crops sit on a network disk or a slow file system.
Shards are read with webdataset's pipeline (shard shuffle, split across DataLoader workers, sample shuffle
buffer, all seeded per epoch); only ``.jpg/.png/.webp/.cls/.json`` members are kept, and none is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from pipeline.core.base.errors import UserError
from pipeline.core.learn.data import Batch, Classes, Split, decode, num_batches
from pipeline.core.base.progress import Progress

#: the index beside the shards
INDEX_NAME = "index.json"
#: bumped when the layout changes; a reader refuses other versions (2: each shard's sha256 in the index)
SHARDS_FORMAT = 2
#: what fixes shards that are not what the index says: the stage rebuilds them from data/splits
RE_RUN = "re-run the shards stage (python -m pipeline.stages.shards)"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: image member extension per file suffix (WebDataset's usual names)
IMAGE_EXTENSIONS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
#: samples held by each worker's shuffle buffer (raw bytes, decoded after the shuffle)
SHUFFLE_BUFFER = 1000
#: images a worker decodes and hands over at a time (the main process cuts exact batches from them)
CHUNK = 32
#: every member's mtime (2000-01-01 UTC): fixed, so equal inputs give equal bytes; not 0, which tar tools
#: warn about when extracting
MTIME = 946684800
#: members extract as ordinary readable files
MODE = 0o644


def shard_pattern(split: str) -> str:
    """``train-%06d.tar``: the split's shards, numbered in the order their images were written."""
    return f"{split}-%06d.tar"


def sample_key(relative: Path) -> str:
    """``<class folder>/<stem>`` for ``<split>/<class folder>/<stem>.<ext>``; dots in the stem become ``_``.

    WebDataset splits a member's name at the first dot of its last part, so a key must have none there.
    """
    return f"{relative.parent.name}/{relative.stem.replace('.', '_')}"


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


def file_sha256(path: Path) -> str:
    """A shard's sha256, read in blocks (a shard can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(split: Split, root: Path) -> str:
    """sha256 of every file's path (relative to ``root``), size and class: what the shards must match."""
    digest = hashlib.sha256()
    for path, target in zip(split.paths, split.targets, strict=True):
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\t{target}\n".encode())
    return digest.hexdigest()


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


def matching_shards(folder: Path, split: Split, root: Path, classes: Classes) -> list[Path] | None:
    """The shard files of ``split`` when ``folder``'s index describes exactly that split of ``root`` (same
    files, same sizes, same classes); None otherwise (stream the folders). The shards themselves must then
    be the ones the index lists, byte for byte (:func:`check_shard_files`)."""
    index = read_index(folder)
    entry = index.splits.get(split.name) if index else None
    if entry is None or index.dirnames != classes.dirnames or entry.fingerprint != fingerprint(split, root):
        return None
    files = [folder / name for name in entry.files]
    check_shard_files(files, entry)
    return files


def check_shard_files(files: list[Path], entry: SplitShards) -> None:
    """Every shard there, at its size and sha256 from the index; else a :class:`UserError` with the fix.

    Read once before training streams from them (one sequential read per shard): a label flipped in place,
    a truncated or swapped tar would otherwise train silently on what the splits do not say.
    """
    with Progress(len(files), "check shards", "tar", leave=False) as bar:
        for file, size, sha256 in zip(files, entry.sizes, entry.sha256s, strict=True):
            if not file.is_file():
                raise UserError(f"{file}: listed in {file.parent / INDEX_NAME} but missing; {RE_RUN}")
            if file.stat().st_size != size or file_sha256(file) != sha256:
                raise UserError(f"{file}: not the shard the shards stage wrote (its sha256 differs from "
                                f"{file.parent / INDEX_NAME}'s); {RE_RUN}")
            bar.update()


def write_split_shards(split: Split, root: Path, classes: Classes, out: Path, max_images: int,
                       max_bytes: int) -> SplitShards:
    """``split`` (files under ``root``) as shards in ``out``, a new one after ``max_images`` images or once
    one holds ``max_bytes``; returns what the index records about them.

    Deterministic bytes: webdataset's ``ShardWriter`` writes a sample's members in sorted order and its
    ``TarWriter`` takes a fixed mtime, owner names and mode (the numeric uid/gid stay ``TarInfo``'s 0); the
    samples come in path order. So the same files give byte-identical shards, wherever and whenever.
    """
    check_unique_keys(split, root)
    written: list[str] = []
    pattern = str(out).replace("%", "%%") + "/" + shard_pattern(split.name)  # printf-style: escape the folder's %
    sink = wds.ShardWriter(pattern, maxcount=max_images, maxsize=max_bytes, verbose=0,
                           post=lambda fname: written.append(Path(fname).name), encoder=False,
                           mtime=MTIME, user="", group="", mode=MODE, format="PAX_FORMAT")
    with sink, Progress(len(split), f"shards {split.name}", "img", leave=False) as bar:
        for path, target in zip(split.paths, split.targets, strict=True):
            relative = path.relative_to(root)
            meta = {"dirname": classes.dirnames[target], "label": classes.labels[target], "path": relative.as_posix()}
            sink.write({
                "__key__": sample_key(relative),
                IMAGE_EXTENSIONS[path.suffix.lower()]: path.read_bytes(),
                "cls": str(target).encode(),
                "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
            })
            bar.update()
    return SplitShards(written, [(out / f).stat().st_size for f in written], [file_sha256(out / f) for f in written],
                       len(split), fingerprint(split, root))


class _ShardStream(IterableDataset):
    """Chunks of decoded images from a list of shards, as webdataset pipelines them (in DataLoader workers).

    Each ``detshuffle`` stage counts its own epochs, so a persistent worker (or the main process, with no
    workers) reshuffles every epoch, and the same seed gives the same order again.
    """

    def __init__(self, files: list[Path], size: int, num_classes: int, shuffle: bool, seed: int) -> None:
        self.size, self.num_classes = size, num_classes
        stages: list = [wds.SimpleShardList([str(f) for f in files])]
        if shuffle:  # the same permutation in every worker, before each takes its share
            stages.append(wds.detshuffle(bufsize=len(files), initial=len(files), seed=seed))
        stages += [wds.split_by_worker, wds.tarfile_to_samples(select_files=_wanted_member)]
        if shuffle:
            stages.append(wds.detshuffle(bufsize=SHUFFLE_BUFFER, initial=SHUFFLE_BUFFER // 10, seed=seed))
        stages += [wds.map(self._decode), wds.batched(CHUNK, collation_fn=_stack, partial=True)]
        self.pipeline = wds.DataPipeline(*stages)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.pipeline)

    def _decode(self, sample: dict) -> tuple[torch.Tensor, int]:
        name = f"{sample.get('__url__')}:{sample.get('__key__')}"
        images = [sample[ext] for ext in ("jpg", "png", "webp") if ext in sample]
        try:
            target = int(sample["cls"])
        except (KeyError, ValueError):
            target = -1
        if len(images) != 1 or not 0 <= target < self.num_classes:
            raise UserError(f"{name}: a sample needs one image and a class index below {self.num_classes}")
        return decode(images[0], self.size, name), target


def _reason(exc: BaseException) -> str:
    """One line for an error from the shard pipeline. A DataLoader worker's error comes back with its
    traceback folded into the message: its last line is kept, without the exception's type and the file
    object webdataset appends (``('unexpected end of data', <_io.BufferedReader ...>, 'x.tar')``)."""
    text = str(exc).strip()
    last = text.splitlines()[-1] if text else type(exc).__name__
    last = re.sub(r"^[\w.]+(Error|Exception): ", "", last)
    return re.sub(r", <[^>]*>", "", last)


def _wanted_member(name: str) -> bool:
    return name.rpartition(".")[2].lower() in {"jpg", "png", "webp", "cls", "json"}


def _stack(samples: list[tuple[torch.Tensor, int]]) -> Batch:
    return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples], dtype=torch.int64)


class ShardBatches:
    """Batches streamed from a split's tar shards, decoded by DataLoader workers, cut to exact batch sizes.

    Workers hand over chunks whose sizes depend on how the shards fall between them; the main process
    cuts them into ``batch_size`` batches, so an epoch has exactly :func:`len` batches (the one-cycle
    schedule counts on it): a training epoch drops the ragged last batch, any other split keeps it.
    """

    def __init__(self, files: list[Path], num_images: int, size: int, batch_size: int, num_classes: int,
                 shuffle: bool, seed: int, workers: int, device: torch.device) -> None:
        self.device, self.num_images, self.batch_size, self.shuffle = device, num_images, batch_size, shuffle
        workers = min(workers, len(files))  # a worker without a shard would only idle
        self.loader = DataLoader(_ShardStream(files, size, num_classes, shuffle, seed), batch_size=None,
                                 num_workers=workers, pin_memory=device.type == "cuda",
                                 persistent_workers=workers > 0, prefetch_factor=4 if workers else None)

    def __len__(self) -> int:
        return num_batches(self.num_images, self.batch_size, drop_last=self.shuffle)

    def __iter__(self) -> Iterator[Batch]:
        try:
            yield from self._batches()
        except (UserError, tarfile.TarError, OSError, ValueError) as exc:
            raise UserError(f"cannot read the shards: {_reason(exc)}; {RE_RUN}") from None

    def _batches(self) -> Iterator[Batch]:
        images: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        held = batches = 0
        for chunk_images, chunk_targets in self.loader:
            images.append(chunk_images)
            targets.append(chunk_targets)
            held += len(chunk_targets)
            while held >= self.batch_size and batches < len(self):
                yield self._cut(images, targets, self.batch_size)
                held -= self.batch_size
                batches += 1
        if held and batches < len(self):
            yield self._cut(images, targets, held)

    def _cut(self, images: list[torch.Tensor], targets: list[torch.Tensor], n: int) -> Batch:
        """The first ``n`` images held (removed from the lists), on the device."""
        all_images, all_targets = torch.cat(images), torch.cat(targets)
        images[:] = [all_images[n:]]
        targets[:] = [all_targets[n:]]
        return (all_images[:n].to(self.device, non_blocking=True),
                all_targets[:n].to(self.device, non_blocking=True))
