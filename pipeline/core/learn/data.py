"""From a class-folder split to batches of model inputs, without starving a GPU.

The crops this pipeline makes are small and few enough to decode ONCE into a uint8 tensor of fixed size
that lives on the training device; an epoch is then a permutation of indices, and augmentation (random
resized crop + flip) is one batched ``grid_sample`` on the device. PIL runs only in the one-off decode,
so the usual ceiling of a PIL DataLoader (a few hundred images/s per worker) no longer caps training.
When the cache would not fit the memory budget, the same uint8 tensors stream from disk through a
DataLoader with workers sized to the machine, and the same device-side augmentation runs on them.

Every image is squashed to a square (not centre-cropped): a crop is its box, so all of it is the object.
"""
from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from pipeline.core.base.errors import UserError
from pipeline.core.base.paths import IMAGE_SUFFIXES
from pipeline.core.base.progress import Progress
from pipeline.core.base.safe import printable

#: name of the ``{label_dirname: display name}`` file in the splits folder
LABELS_FILE = "labels.json"
#: the training cache is this much larger than img_size, so random crops are cut from real detail
#: (torchvision's resize-256-crop-224 ratio)
TRAIN_CACHE_RATIO = 8 / 7
#: share of the free memory of the device (GPU, or host RAM on a CPU) the auto cache may take
CACHE_SHARE = 0.5

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images [B, 3, S, S] and int64 targets [B], on the device


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


def read_split(root: Path, name: str, classes: Classes) -> Split:
    """Every image under ``root/name/<class>/``, sorted, so batches and reports are repeatable."""
    folder = root / name
    if not folder.is_dir():
        raise UserError(f"{folder} not found: run the split stage first (see dvc.yaml)")
    index = {d: i for i, d in enumerate(classes.dirnames)}
    paths: list[Path] = []
    targets: list[int] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if text_name(sub) not in index:
            raise UserError(f"{sub}: class folder missing from the train split; re-run the split stage")
        files = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        for file in files:
            text_name(file)  # refuses a name that is not UTF-8
        paths += files
        targets += [index[sub.name]] * len(files)
    if not paths:
        raise UserError(f"{folder}: no images; check the split fractions in params.yaml")
    return Split(name, paths, targets)


def text_name(path: Path) -> str:
    """``path``'s name, which must be text: a name with bytes that are not UTF-8 cannot go into a shard, its
    index, a report or a CSV, so it is refused, naming the file to rename."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{printable(str(path))}: the name is not UTF-8 text; rename it (the split stage names "
                        "crops <ImageID>_<BoxIndex>.jpg in folders named after the labels)") from None
    return path.name


def decode(source: Path | bytes, size: int, name: str | None = None) -> torch.Tensor:
    """One image (a file, or its bytes from a shard) as a uint8 ``[3, size, size]`` tensor (EXIF-upright,
    RGB, squashed to a square); ``name`` is what an error names (default: the path)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.draft("RGB", (size, size))  # JPEG: let libjpeg decode at 1/2..1/8 scale when that suffices
            image = ImageOps.exif_transpose(image).convert("RGB")
            image = image.resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise UserError(f"{name or source}: cannot read image ({exc})") from None
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


class _Files(Dataset):
    """Decodes one split's files (in DataLoader workers) to fixed-size uint8 tensors."""

    def __init__(self, split: Split, size: int) -> None:
        self.split, self.size = split, size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return decode(self.split.paths[i], self.size), self.split.targets[i]


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches in one epoch of ``n`` images."""
    # A training epoch drops the ragged last batch (a batch of one breaks BatchNorm), unless that is all there is.
    return n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)


class CachedBatches:
    """Batches gathered from one uint8 tensor that already sits on the device: no decoding, no host copies."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, shuffle: bool, seed: int):
        self.images, self.targets, self.batch_size, self.shuffle = images, targets, batch_size, shuffle
        self.num_images = len(targets)
        self.generator = torch.Generator(device=images.device).manual_seed(seed)

    def __len__(self) -> int:
        return num_batches(len(self.targets), self.batch_size, drop_last=self.shuffle)

    def __iter__(self) -> Iterator[Batch]:
        n, device = len(self.targets), self.images.device
        order = torch.randperm(n, generator=self.generator, device=device) if self.shuffle else None
        for i in range(len(self)):
            if order is None:
                window = slice(i * self.batch_size, (i + 1) * self.batch_size)
                yield self.images[window], self.targets[window]
            else:
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                yield self.images[idx], self.targets[idx]


class StreamedBatches:
    """Batches decoded from disk by DataLoader workers each epoch, for splits too big to cache."""

    def __init__(self, split: Split, size: int, batch_size: int, shuffle: bool, seed: int, workers: int,
                 device: torch.device) -> None:
        self.device, self.num_images = device, len(split)
        self.loader = DataLoader(
            _Files(split, size), batch_size=batch_size, shuffle=shuffle,
            drop_last=shuffle and len(split) >= batch_size, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(seed),
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, targets in self.loader:
            yield images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)


Batches = CachedBatches | StreamedBatches


def make_batches(split: Split, size: int, batch_size: int, *, shuffle: bool, device: torch.device, workers: int,
                 cache_mb: int, seed: int = 0) -> CachedBatches | StreamedBatches:
    """Batches of ``split`` at ``size`` px: cached on ``device`` when it fits ``cache_mb``, else streamed.

    ``cache_mb``: -1 = up to :data:`CACHE_SHARE` of the device's free memory, 0 = never cache, N = at most N MiB.
    """
    if not fits_cache(len(split), size, device, cache_mb):
        return StreamedBatches(split, size, batch_size, shuffle, seed, workers, device)
    targets = torch.tensor(split.targets, dtype=torch.int64, device=device)
    return CachedBatches(decode_all(split, size, device, workers), targets, batch_size, shuffle, seed)


def fits_cache(images: int, size: int, device: torch.device, cache_mb: int) -> bool:
    """Do ``images`` decoded uint8 squares of ``size`` px fit the cache budget (see :func:`make_batches`)?"""
    budget = CACHE_SHARE * free_memory(device) if cache_mb < 0 else cache_mb * 2**20
    return images * 3 * size * size <= budget


def decode_all(split: Split, size: int, device: torch.device, workers: int) -> torch.Tensor:
    """Every image of ``split`` decoded once (in parallel) straight into a uint8 tensor on ``device``."""
    images = torch.empty((len(split), 3, size, size), dtype=torch.uint8, device=device)
    loader = DataLoader(_Files(split, size), batch_size=64, num_workers=workers, pin_memory=device.type == "cuda")
    start = 0
    with Progress(len(split), f"decode {split.name}", "img", leave=False) as bar:
        for batch, _ in loader:
            images[start : start + len(batch)].copy_(batch, non_blocking=True)
            start += len(batch)
            bar.update(len(batch))
    return images


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: GPU memory for CUDA, available host RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil  # host figures are needed on the CPU path only; the GPU benchmark machine may lack psutil

    return psutil.virtual_memory().available


def augment(images: torch.Tensor, size: int, generator: torch.Generator, min_scale: float) -> torch.Tensor:
    """Random resized crop (area ``min_scale``..1, aspect 3/4..4/3) and horizontal flip, batched on the device.

    ``min_scale`` is ``train.min_scale``: crops are tight boxes, so not ImageNet's 0.08.

    Each image gets its own crop box and flip, expressed as one affine map; a single ``grid_sample``
    then cuts and resizes the whole batch. Returns float pixels on the 0..255 scale, ``[B, 3, size, size]``.
    """
    b = images.shape[0]
    r = torch.rand((b, 5), generator=generator, device=images.device)
    area = min_scale + (1 - min_scale) * r[:, 0]
    ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * r[:, 1])
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # half-extents in grid units (-1..1 spans the image)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    flip = torch.where(r[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros((b, 2, 3), device=images.device)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = (1 - w) * (2 * r[:, 2] - 1)
    theta[:, 1, 1] = h
    theta[:, 1, 2] = (1 - h) * (2 * r[:, 3] - 1)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class Normalize:
    """uint8 (or 0..255 float) batches -> the normalised float input a backbone expects.

    Holds mean/std on the device so no per-batch host-to-device copy stalls the GPU; channels_last on
    CUDA, where cuDNN's bf16 convolutions are fastest in that layout.
    """

    def __init__(self, mean: list[float] | tuple[float, ...], std: list[float] | tuple[float, ...],
                 device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)
