"""``params.yaml``: one section per stage, typed, with defaults, validated strictly.

DVC's convention is that every stage reads ``params.yaml`` from the working directory. We read the
whole file, reject unknown keys (a typo such as ``select.limt_per_label`` would otherwise be silently
ignored) and reject bad values, each with a one-line :class:`~pipeline.errors.UserError` naming the key.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import UserError

PARAMS_FILE = "params.yaml"


def _check(**rules: Any) -> dict[str, Any]:
    """Field metadata: ``min``/``max`` bounds, ``http_url`` for URLs."""
    return rules


@dataclass(frozen=True)
class SourceParams:
    """Where Open Images lives and which part of it to use."""

    version: Literal["v4", "v5", "v6", "v7"] = "v6"
    base_url: str = field(default="https://storage.googleapis.com/openimages", metadata=_check(http_url=True))
    subsets: list[Literal["train", "validation", "test"]] = field(
        default_factory=lambda: ["train", "validation", "test"], metadata=_check(min_len=1)
    )
    #: ``flickr``: full-size originals at OriginalURL; ``cvdf``: resized copies at cvdf_url/<subset>/<ImageID>.jpg
    images: Literal["flickr", "cvdf"] = "flickr"
    cvdf_url: str = field(default="https://open-images-dataset.s3.amazonaws.com", metadata=_check(http_url=True))


@dataclass(frozen=True)
class SelectParams:
    """Which boxes of the chosen labels to keep."""

    include_subclasses: bool = True
    #: drop boxes whose flag is 1; a flag of -1 (unknown) or 0 is kept
    exclude_group_of: bool = True
    exclude_depiction: bool = True
    exclude_occluded: bool = False
    exclude_truncated: bool = False
    #: minimum box area as a fraction of the image (0..1)
    min_box_area: float = field(default=0.0, metadata=_check(min=0.0, max=1.0))
    #: at most this many boxes per label, drawn with ``seed`` (0 = no limit)
    limit_per_label: int = field(default=0, metadata=_check(min=0))
    seed: int = 0


@dataclass(frozen=True)
class DownloadParams:
    """How politely and how hard to fetch images."""

    #: requests per second shared by all workers (0 = no limit)
    rate: float = field(default=1.0, metadata=_check(min=0.0))
    workers: int = field(default=16, metadata=_check(min=1, max=1024))
    connect_timeout: float = field(default=10.0, metadata=_check(min=0.1))
    read_timeout: float = field(default=30.0, metadata=_check(min=0.1))
    retries: int = field(default=5, metadata=_check(min=0, max=100))
    #: first backoff delay in seconds, doubled per retry (with jitter), capped by ``max_backoff``
    backoff: float = field(default=1.0, metadata=_check(min=0.0))
    max_backoff: float = field(default=60.0, metadata=_check(min=0.0))
    #: responses larger than this are rejected (bytes)
    max_bytes: int = field(default=50_000_000, metadata=_check(min=1024))
    #: images per shard (a slice with its own manifest part)
    shard_size: int = field(default=1000, metadata=_check(min=1))
    #: processes that run shards side by side, each with ``rate / processes`` (0 = one per usable core);
    #: more than one only pays when the rate is high enough to keep one core busy
    processes: int = field(default=1, metadata=_check(min=0))


@dataclass(frozen=True)
class CropParams:
    """How to cut boxes out of images."""

    #: extra margin around each box, as a fraction of the box's width/height
    padding: float = field(default=0.0, metadata=_check(min=0.0, max=1.0))
    #: boxes whose shorter side is smaller than this (in pixels) are skipped
    min_side: int = field(default=32, metadata=_check(min=1))
    #: crops whose longer side exceeds this are shrunk to it (0 = keep full size)
    max_side: int = field(default=0, metadata=_check(min=0))
    #: images with more pixels than this are refused (decompression-bomb guard)
    max_pixels: int = field(default=100_000_000, metadata=_check(min=1))
    jpeg_quality: int = field(default=90, metadata=_check(min=1, max=100))
    #: worker processes (0 = one per core)
    workers: int = field(default=0, metadata=_check(min=0))


@dataclass(frozen=True)
class CleanParams:
    """What counts as unusable or redundant."""

    min_side: int = field(default=32, metadata=_check(min=1))
    #: two photos whose 256-bit perceptual hashes differ in at most this many bits are near duplicates (-1 = off)
    near_duplicate_distance: int = field(default=16, metadata=_check(min=-1, max=256))
    #: a photo this close (bits of 256) to Flickr's "photo unavailable" picture is a placeholder (-1 = off)
    placeholder_distance: int = field(default=24, metadata=_check(min=-1, max=256))


@dataclass(frozen=True)
class SplitParams:
    """Train/val/test fractions, grouped and stratified."""

    train: float = field(default=0.7, metadata=_check(min=0.0, max=1.0))
    val: float = field(default=0.15, metadata=_check(min=0.0, max=1.0))
    test: float = field(default=0.15, metadata=_check(min=0.0, max=1.0))
    seed: int = 0
    #: a label with fewer clean crops than this stops the split with a clear message
    min_per_label: int = field(default=10, metadata=_check(min=1))


@dataclass(frozen=True)
class TrainParams:
    """Fine-tuning recipe (fastai's fine_tune in plain PyTorch)."""

    arch: Literal["mobilenet_v2", "resnet18", "resnet50"] = "mobilenet_v2"
    #: ``imagenet`` (torchvision's weights, found offline when installed locally), ``none``, or a file path
    weights: str = "imagenet"
    #: epochs with the backbone frozen (head only), then ``epochs`` with all layers unfrozen
    freeze_epochs: int = field(default=1, metadata=_check(min=0))
    epochs: int = field(default=3, metadata=_check(min=0))
    img_size: int = field(default=224, metadata=_check(min=16, max=1024))
    batch_size: int = field(default=64, metadata=_check(min=1))
    #: peak learning rate of the head; earlier layer groups get smaller ones (discriminative rates)
    lr: float = field(default=2e-3, metadata=_check(min=0.0))
    weight_decay: float = field(default=0.01, metadata=_check(min=0.0))
    #: DataLoader workers (-1 = sized to the machine)
    workers: int = field(default=-1, metadata=_check(min=-1))
    #: MiB for the decoded-image cache on the training device (-1 = half its free memory, 0 = stream from disk)
    cache_mb: int = field(default=-1, metadata=_check(min=-1))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0


@dataclass(frozen=True)
class EvaluateParams:
    """How to judge the model on the test split."""

    #: how many of the most confident mistakes to show in the grid
    worst: int = field(default=16, metadata=_check(min=0))
    batch_size: int = field(default=64, metadata=_check(min=1))
    #: DataLoader workers decoding the test images (-1 = sized to the machine)
    workers: int = field(default=-1, metadata=_check(min=-1))
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class PackageParams:
    """Where and under which name to publish the dataset."""

    name: str = "openimages/hamburger-sandwich"
    #: ``s3://bucket`` to push; empty to build into a local registry only
    registry: str = ""
    message: str = "openimages-pipeline dataset"


@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``."""

    labels: list[str] = field(default_factory=lambda: ["Hamburger", "Sandwich"], metadata=_check(min_len=1))
    source: SourceParams = field(default_factory=SourceParams)
    select: SelectParams = field(default_factory=SelectParams)
    download: DownloadParams = field(default_factory=DownloadParams)
    crop: CropParams = field(default_factory=CropParams)
    clean: CleanParams = field(default_factory=CleanParams)
    split: SplitParams = field(default_factory=SplitParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    package: PackageParams = field(default_factory=PackageParams)

    def __post_init__(self) -> None:
        total = self.split.train + self.split.val + self.split.test
        if abs(total - 1.0) > 1e-6:
            raise UserError(f"params.yaml: split.train + split.val + split.test must be 1.0, got {total:g}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for package metadata and reports)."""
        return dataclasses.asdict(self)


def usable_cores() -> int:
    """Cores this process may run on: what the "auto" worker counts (``crop.workers: 0``, ``train.workers: -1``)
    resolve to. The affinity mask, not the machine's count, so containers and ``taskset`` are respected."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def load_params(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate ``params.yaml`` (a missing file means all defaults).

    ``overrides`` maps dotted keys (``"download.rate"``) to values, for command-line flags.
    """
    path = Path(path)
    raw: Any = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return _build(Params, raw, prefix="")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"params.yaml: {prefix.rstrip('.') or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(
            f"params.yaml: unknown key '{prefix}{unknown[0]}' (known in this section: {', '.join(fields)})"
        )
    values = {}
    for name, value in raw.items():
        key = prefix + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key + ".")
        else:
            values[name] = _coerce(key, hint, value, fields[name].metadata)
    return cls(**values)


def _coerce(key: str, hint: Any, value: Any, rules: typing.Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise UserError(f"params.yaml: {key} must be a list, got {value!r}")
        (item_hint,) = typing.get_args(hint)
        items = [_coerce(f"{key}[{i}]", item_hint, v, {}) for i, v in enumerate(value)]
        if len(items) < rules.get("min_len", 0):
            raise UserError(f"params.yaml: {key} must have at least {rules['min_len']} item(s)")
        return items
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise UserError(f"params.yaml: {key} must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported params type for {key}: {hint}")
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"params.yaml: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"params.yaml: {key} must be a whole number, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"params.yaml: {key} must be a number, got {value!r}")
        value = float(value)
    elif hint is str:
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise UserError(f"params.yaml: {key} must be text, got {value!r}")
        if rules.get("http_url") and not value.lower().startswith(("http://", "https://")):
            raise UserError(f"params.yaml: {key} must be an http(s) URL, got {value!r}")
    if "min" in rules and value < rules["min"]:
        raise UserError(f"params.yaml: {key} must be at least {rules['min']}, got {value!r}")
    if "max" in rules and value > rules["max"]:
        raise UserError(f"params.yaml: {key} must be at most {rules['max']}, got {value!r}")
    return value
