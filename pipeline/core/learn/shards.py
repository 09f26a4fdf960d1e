"""Training batches streamed from the WebDataset tar shards (layout and index: :mod:`.shard_index`).

Streaming reads a tar sequentially, one large read per shard instead of one open and seek per image: the
form to use when the decoded cache does not fit and the crops sit on a network disk or a slow file system.
Shards are read with webdataset's pipeline (shard shuffle, split across DataLoader workers, sample shuffle
buffer, all seeded per epoch); only ``.jpg/.png/.webp/.cls/.json`` members are kept, and none is unpickled.
A shard is used only once it is, byte for byte, the one the index lists (:func:`matching_shards`).
"""
from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from pipeline.core.base.errors import UserError
from pipeline.core.base.progress import Progress
from pipeline.core.learn.data import Batch, decode, num_batches
from pipeline.core.learn.folders import Classes, Split
from pipeline.core.learn.shard_index import INDEX_NAME, RE_RUN, SplitShards, file_sha256, holds_split, read_index

#: samples held by each worker's shuffle buffer (raw bytes, decoded after the shuffle)
SHUFFLE_BUFFER = 1000
#: images a worker decodes and hands over at a time (the main process cuts exact batches from them)
CHUNK = 32


def matching_shards(folder: Path, split: Split, root: Path, classes: Classes) -> list[Path] | None:
    """The shard files of ``split`` when ``folder``'s index describes exactly that split of ``root`` (same
    files, same sizes, same classes); None otherwise (stream the folders). The shards themselves must then
    be the ones the index lists, byte for byte (:func:`check_shard_files`)."""
    index = read_index(folder)
    if not holds_split(index, split, root, classes):
        return None
    entry = index.splits[split.name]
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
