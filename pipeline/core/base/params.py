"""``params.yaml``: one section per stage, typed and validated strictly by pydantic, plus ``runtime``.

Two kinds of settings: **tracked**, one section per stage, what changes the results (dvc.yaml lists them as
the stages' ``params`` and the dataset package records them, so changing one re-runs the stages that read
it); and **runtime**, how fast and how patient, never what (no stage tracks it, no package records it).
Every stage reads ``params.yaml`` from the working directory (DVC's convention), and the whole file is
validated on every read: each error is one :class:`~pipeline.core.base.errors.UserError` naming the key, or
the command-line flag its value came from. docs/architecture.md ("Settings: tracked params and runtime").
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from pipeline.core.base.errors import UserError
from pipeline.core.base.package_names import check_dataset_name
from pipeline.core.base.redact import public_url
from pipeline.core.base.safe import check_http_url
from pipeline.core.base.stages import STAGES

PARAMS_FILE = "params.yaml"
#: the sections some stage tracks (dvc.yaml's ``params``: a change re-runs it), from the table of stages; every
#: section but ``runtime``. What a package records is narrower (:data:`~pipeline.core.base.stages.RECORDED`)
TRACKED_SECTIONS = tuple(dict.fromkeys(section for stage in STAGES for section in stage.sections))

HttpUrl = Annotated[str, AfterValidator(check_http_url)]
_SCHEDULER = re.compile(r"^((tcp|tls)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?$")
_URL_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://[^\s/][^\s]*$")
_PROTOCOL = re.compile(r"^([a-z][a-z0-9+.-]*)://")
#: object stores (fsspec protocols) that every process and machine shares and where a put shows the whole
#: object or nothing: S3 (and S3-compatible stores through AWS_ENDPOINT_URL_S3), Google Cloud Storage, Azure
SHARED_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
_NOT_SHARED = {
    "memory": "one process's memory, which no worker or other process sees",
    "file": "a folder on one machine, not an object store",
    "local": "a folder on one machine, not an object store",
    "http": "read-only", "https": "read-only",
}


def check_scheduler_address(address: str) -> str:
    """Empty, or what ``dask worker`` is given: ``tcp://host:8786``, ``tls://host:port`` or ``host:port``."""
    if address and not _SCHEDULER.match(address):
        raise ValueError(f"must look like tcp://host:8786 (a Dask scheduler's address), got {public_url(address)!r}")
    return address


def check_rate_key(key: str) -> str:
    """Empty, or a name of printable characters: it is shown in messages and sent to a scheduler."""
    if len(key) > 200 or not key.isprintable():
        raise ValueError(f"must be at most 200 printable characters, got {key[:40]!r}")
    return key


def check_store_url(store: str) -> str:
    """Empty (data/ here, or a shared file system at the same path everywhere), or an object store that every
    process and machine reaches and that shows an object only whole (``SHARED_STORES``): the workers put
    photos and crops there and the stage, other workers and other runs read them (pipeline.core.compute.store).
    Anything else is refused with a line saying why: ``memory://`` lives in one process (the stage would find
    none of its workers' photos), a plain folder (``file://``) is what the empty value is for, http is
    read-only, and other file systems (sftp, hdfs...) are one machine's disk or show files half written."""
    if not store:
        return store
    protocol = _PROTOCOL.match(store)
    if protocol and protocol.group(1) not in SHARED_STORES:
        why = _NOT_SHARED.get(protocol.group(1), "not an object store every process and machine shares with "
                                                 "whole-object writes")
        raise ValueError(f"cannot be {public_url(store)!r}: {protocol.group(0)} is {why}; use one of "
                         f"{', '.join(p + '://' for p in SHARED_STORES)}, or leave it empty for data/ here")
    if not _URL_SCHEME.match(store):
        raise ValueError("must be empty (data/ on a path every worker shares) or an object store URL such as "
                         f"s3://bucket/prefix, got {public_url(store)!r}")
    return store.rstrip("/")


#: the longest any timeout, deadline or backoff may be: a week. Anything longer is a typo, and a value like
#: 1e300 overflows the socket and event-loop clocks it reaches (an OverflowError deep in a transfer)
MAX_SECONDS = 7 * 24 * 3600.0
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
#: every seed reaches numpy's and torch's generators; numpy's global seed takes 0..2**32-1 and no more
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
#: the side, in pixels, images are squashed to for the model (train.img_size, and a model file's img_size)
MIN_IMG_SIZE, MAX_IMG_SIZE = 16, 1024


def _one_or_many(value: Any) -> Any:
    """``labels: Hamburger`` is a list of one."""
    return [value] if isinstance(value, str) else value


Label = Annotated[str, Field(min_length=1, max_length=200)]
#: the words of the source section, once: pipeline.core.net.sources and the commands' choices read them here
Version = Literal["v4", "v5", "v6", "v7"]
Subset = Literal["train", "validation", "test"]
ImageSource = Literal["flickr", "cvdf"]
VERSIONS: tuple[str, ...] = get_args(Version)
SUBSETS: tuple[str, ...] = get_args(Subset)
IMAGE_SOURCES: tuple[str, ...] = get_args(ImageSource)


class Section(BaseModel):
    """Strict: no type coercion (``"5"`` is not 5, ``1`` is not true), no unknown keys, no NaN/infinity."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SourceParams(Section):
    """Where Open Images lives and which part of it to use."""

    version: Version = "v6"
    base_url: HttpUrl = "https://storage.googleapis.com/openimages"
    subsets: list[Subset] = Field(list(SUBSETS), min_length=1)
    #: ``flickr``: full-size originals at OriginalURL; ``cvdf``: resized copies at cvdf_url/<subset>/<ImageID>.jpg
    images: ImageSource = "flickr"
    cvdf_url: HttpUrl = "https://open-images-dataset.s3.amazonaws.com"


class MetadataParams(Section):
    """Limits on the metadata files (they come from the internet)."""

    #: a metadata file larger than this is refused, whatever its server says (the V6 box file is 2.3 GB)
    max_bytes: int = Field(16 << 30, ge=1 << 20)


class SelectParams(Section):
    """Which boxes of the chosen labels to keep."""

    include_subclasses: bool = True
    #: drop boxes whose flag is 1; a flag of -1 (unknown) or 0 is kept
    exclude_group_of: bool = True
    exclude_depiction: bool = True
    exclude_occluded: bool = False
    exclude_truncated: bool = False
    #: minimum box area as a fraction of the image (0..1)
    min_box_area: float = Field(0.0, ge=0.0, le=1.0)
    #: at most this many boxes per label, drawn with ``seed`` (0 = no limit)
    limit_per_label: int = Field(0, ge=0)
    seed: Seed = 0


class DownloadParams(Section):
    """What the download promises the image server, and what it accepts from it."""

    #: requests per second for all workers together (0 = no limit): the politeness promised to Flickr
    rate: float = Field(1.0, ge=0.0)
    #: responses larger than this are recorded ``too_large`` (bytes)
    max_bytes: int = Field(50_000_000, ge=1024)


class CropParams(Section):
    """How to cut boxes out of images."""

    #: extra margin around each box, as a fraction of the box's width/height
    padding: float = Field(0.0, ge=0.0, le=1.0)
    #: crops whose shorter side is under this many pixels are dropped (by crop, and again by clean)
    min_side: int = Field(32, ge=1)
    #: crops whose longer side exceeds this are shrunk to it (0 = keep full size)
    max_side: int = Field(0, ge=0)
    #: images with more pixels than this are refused before decoding (decompression-bomb guard)
    max_pixels: int = Field(100_000_000, ge=1)
    jpeg_quality: int = Field(90, ge=1, le=100)


class CleanParams(Section):
    """What counts as unusable or redundant."""

    #: two photos whose 256-bit perceptual hashes differ in at most this many bits are near duplicates (-1 = off)
    near_duplicate_distance: int = Field(16, ge=-1, le=256)
    #: a photo this close (bits of 256) to Flickr's "photo unavailable" picture is a placeholder (-1 = off)
    placeholder_distance: int = Field(24, ge=-1, le=256)


Action = Literal["off", "flag", "reject"]


class AuditParams(Section):
    """What the audit looks for in the clean crops, and what it does with each kind of issue found.

    Actions: ``off`` (not looked at), ``flag`` (recorded in the ledger and shown in the report, kept) or
    ``reject`` (recorded with its reason and score, left out of the splits). Defaults: BENCHMARKS.md.
    """

    #: side the crops are squashed to for their embeddings (smaller is faster on a CPU)
    img_size: int = Field(128, ge=32, le=512)
    #: folds of the cross-validation giving each crop a prediction from a model that never saw it
    folds: int = Field(5, ge=2, le=20)
    seed: Seed = 0
    #: reject: leaving them out gave the train stage +4.3 points at 10 % noise, +2.4 at 20 % and +0.1 at 0 %
    #: (digits, three seeds; BENCHMARKS.md, the audit): the >= 2 gained / < 0.5 lost a default must meet
    label_issue: Action = "reject"
    outlier: Action = "flag"
    blurry: Action = "flag"
    dark: Action = "reject"
    light: Action = "reject"
    low_information: Action = "reject"
    odd_aspect: Action = "flag"
    #: an outlier's mean distance to its neighbours is above Q3 + this x IQR of everyone's
    outlier_iqr: float = Field(3.0, ge=0.0)
    #: blurry: variance of the Laplacian (0..255 luminance, at most 128 px a side) under this
    blurry_threshold: float = Field(30.0, ge=0.0)
    #: dark: the 99th percentile of luminance (0..1) under this
    dark_threshold: float = Field(0.15, ge=0.0, le=1.0)
    #: light: the 1st percentile of luminance (0..1) over this
    light_threshold: float = Field(0.9, ge=0.0, le=1.0)
    #: low information: entropy of the luminance histogram (bits, 0..8) under this
    low_information_threshold: float = Field(1.0, ge=0.0, le=8.0)
    #: odd aspect: shorter side / longer side under this
    odd_aspect_threshold: float = Field(0.2, ge=0.0, le=1.0)


class SplitParams(Section):
    """Train/val/test fractions, grouped and stratified."""

    train: float = Field(0.7, ge=0.0, le=1.0)
    val: float = Field(0.15, ge=0.0, le=1.0)
    test: float = Field(0.15, ge=0.0, le=1.0)
    seed: Seed = 0
    #: a label with fewer clean crops than this stops the split with a clear message
    min_per_label: int = Field(10, ge=1)
    #: photos of one photographer (AuthorProfileURL, else Author) land in one split: a series never straddles
    group_by_author: bool = True


class ShardsParams(Section):
    """How the splits are cut into WebDataset tar shards (``data/shards``)."""

    #: a shard is closed after this many images ...
    max_images: int = Field(1000, ge=1)
    #: ... or once it holds this many MiB of image bytes, whichever comes first
    max_mb: int = Field(256, ge=1)


class TrainParams(Section):
    """Fine-tuning recipe (fastai's fine_tune in plain PyTorch, its numbers measured again: see ``loop.py``)."""

    arch: Literal["mobilenet_v2", "resnet18", "resnet50"] = "mobilenet_v2"
    #: ``imagenet`` (torchvision's weights, found offline when installed locally), ``none``, or a file path
    weights: str = Field("imagenet", min_length=1)
    #: epochs with the backbone frozen (head only), then ``epochs`` with all layers unfrozen
    freeze_epochs: int = Field(0, ge=0)
    epochs: int = Field(5, ge=0)
    img_size: int = Field(224, ge=MIN_IMG_SIZE, le=MAX_IMG_SIZE)
    batch_size: int = Field(64, ge=1)
    #: peak learning rate of the head; earlier layer groups get smaller ones (discriminative rates)
    lr: float = Field(1e-2, gt=0.0)
    #: after unfreezing, the earliest layers learn at 1/lr_spread of the head's rate (fastai: 100)
    lr_spread: float = Field(2.0, ge=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    #: smallest random crop of the training augmentation, as a share of the image's area (1 = no crop)
    min_scale: float = Field(0.85, gt=0.0, le=1.0)
    #: cross-entropy against targets softened by this much (0 = plain one-hot targets)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    seed: Seed = 0


class EvaluateParams(Section):
    """How to judge the model on the test split."""

    #: how many of the most confident mistakes to show in the grid
    worst: int = Field(16, ge=0)
    #: Grad-CAM maps in the report: this many of the worst mistakes and as many correct predictions
    gradcam: int = Field(8, ge=0)


def _package_name(name: str) -> str:
    """Empty (derive it from the labels) or a dataset's owner/name (:mod:`pipeline.core.base.package_names`)."""
    return check_dataset_name(name) if name else name


class PackageParams(Section):
    """Where and under which name to publish the dataset (and its model, as ``<name>-model``)."""

    #: owner/dataset; empty = derived from the labels ([Hamburger, Sandwich] -> openimages/hamburger-sandwich)
    name: Annotated[str, AfterValidator(_package_name)] = ""
    #: ``s3://bucket`` to push; empty to build into a local registry only
    registry: str = ""
    message: str = "openimages-pipeline dataset"
    #: publish even when the name's latest version holds other labels (it then stops being that name's latest)
    allow_other_labels: bool = False


class RuntimeParams(Section):
    """How fast and how patient: machine and network settings that never change what comes out."""

    #: download processes on this machine, sharing one rate (0 = one per usable core)
    download_processes: int = Field(1, ge=0, le=256)
    #: concurrent downloads per process
    connections: int = Field(16, ge=1, le=1024)
    #: images per download batch (the unit of progress a killed run keeps); ``shard_size``, its old name, is read too
    download_batch_size: int = Field(1000, ge=1, validation_alias=AliasChoices("download_batch_size", "shard_size"))
    #: crop processes (0 = one per usable core)
    crop_processes: int = Field(0, ge=0, le=256)
    #: DataLoader workers decoding images for train and evaluate (-1 = one per usable core, less one)
    loader_workers: int = Field(-1, ge=-1, le=256)
    #: auto (CUDA when present), cpu, cuda
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: MiB for the decoded-image cache on the training device (-1 = half its free memory, 0 = stream from disk)
    cache_mb: int = Field(-1, ge=-1)
    eval_batch_size: int = Field(64, ge=1)
    connect_timeout: Seconds = 10.0
    #: longest silence from a server before the attempt is cut
    read_timeout: Seconds = 30.0
    #: a body slower than this many bytes/s over ``stall_window`` seconds is cut (a server that drips)
    min_speed: float = Field(1024.0, ge=0.0)
    stall_window: Seconds = 30.0
    #: longest one image may take, all attempts and waits included
    image_deadline: Seconds = 600.0
    #: longest one metadata file may take, all attempts and waits included (2.3 GB at 1 MB/s is 40 minutes)
    metadata_deadline: Seconds = 6 * 3600.0
    #: attempts after the first, for transient failures (timeouts, resets, 429, 5xx)
    retries: int = Field(5, ge=0, le=100)
    #: first backoff delay in seconds, doubled per retry (with jitter), capped by ``max_backoff``
    backoff: float = Field(1.0, ge=0.0, le=MAX_SECONDS)
    max_backoff: float = Field(60.0, ge=0.0, le=MAX_SECONDS)
    #: where download and crop shards run: ``local`` (this machine's processes) or ``dask`` (a Dask cluster)
    engine: Literal["local", "dask"] = "local"
    #: the Dask scheduler to join (``tcp://host:8786``); empty = ``DASK_SCHEDULER_ADDRESS``, else a
    #: ``distributed.LocalCluster`` started on this machine
    scheduler: Annotated[str, AfterValidator(check_scheduler_address)] = ""
    #: worker processes of that LocalCluster (0 = one per usable core)
    dask_workers: int = Field(0, ge=0, le=256)
    #: where workers put photos and crops: empty = data/ here (on a cluster, a file system every worker
    #: mounts at the same path), or an object store's fsspec URL such as ``s3://bucket/prefix`` (docs/scale.md)
    store: Annotated[str, AfterValidator(check_store_url)] = ""
    #: the name of the request-rate board this run books on: runs with the same name share ``download.rate``
    #: (on one machine, or on one Dask scheduler); empty = the image server's domain (docs/scale.md)
    rate_key: Annotated[str, AfterValidator(check_rate_key)] = ""


class Params(Section):
    """The whole ``params.yaml``."""

    labels: Annotated[list[Label], BeforeValidator(_one_or_many), Field(min_length=1)] = ["Hamburger", "Sandwich"]
    source: SourceParams = SourceParams()
    metadata: MetadataParams = MetadataParams()
    select: SelectParams = SelectParams()
    download: DownloadParams = DownloadParams()
    crop: CropParams = CropParams()
    clean: CleanParams = CleanParams()
    audit: AuditParams = AuditParams()
    split: SplitParams = SplitParams()
    shards: ShardsParams = ShardsParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    package: PackageParams = PackageParams()
    runtime: RuntimeParams = RuntimeParams()

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> Params:
        total = self.split.train + self.split.val + self.split.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split.train + split.val + split.test must be 1.0, got {total:g}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for package metadata and reports)."""
        return self.model_dump(mode="json")

    def tracked(self) -> dict[str, Any]:
        """The sections the stages track (:data:`TRACKED_SECTIONS`): everything but ``runtime``."""
        plain = self.to_dict()
        return {section: plain[section] for section in TRACKED_SECTIONS}


def load_params(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None,
                flags: dict[str, str] | None = None) -> Params:
    """Read and validate ``params.yaml`` (a missing file means all defaults).

    ``overrides`` maps dotted keys (``"download.rate"``) to values, for command-line flags; ``flags`` names
    the flag each came from (``{"download.rate": "--rate"}``), so an error names what the user typed.
    """
    path = Path(path)
    raw = _read(path)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}  # a missing or empty section (``download:``) takes the flag
            node = node[key]
        node[leaf] = value
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        given = {key: flag for key, flag in (flags or {}).items() if key in (overrides or {})}
        raise UserError(_describe(exc, path, given)) from None


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    return _drop_empty(raw)


def _drop_empty(node: dict[Any, Any]) -> dict[Any, Any]:
    """An empty value (``registry:``, ``download:``) means "the default": leave the key out."""
    return {key: _drop_empty(value) if isinstance(value, dict) else value
            for key, value in node.items() if value is not None}


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the safe loader's own error says so
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _describe(exc: ValidationError, path: Path, flags: dict[str, str]) -> str:
    """The first problem as one line: ``params.yaml: select.limit_per_label must be at least 0, got -1``."""
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"] if not isinstance(part, int) or error["type"] == "invalid_key"]
    indices = "".join(f"[{part}]" for part in error["loc"] if isinstance(part, int) and error["type"] != "invalid_key")
    key = ".".join(loc) + indices
    dotted = ".".join(loc)
    where = f"{flags[dotted]}:" if dotted in flags else f"{path.name}: {key}" if key else f"{path.name}:"
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in ("extra_forbidden", "invalid_key"):
        section = _section_model(error["loc"][:-1])
        known = ", ".join(section.model_fields) if section else ""
        return f"{path.name}: unknown key '{key}'" + (f" (known in this section: {known})" if known else "")
    if kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
        return f"{flags.get(dotted, path.name)}: {message}" if not key else f"{where} {message}"
    return f"{where} {_MESSAGES.get(kind, lambda c: error['msg'].lower())(ctx)}, got {_shown(value)}"


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_MESSAGES: dict[str, Any] = {
    "greater_than_equal": lambda c: f"must be at least {c['ge']}",
    "greater_than": lambda c: f"must be more than {c['gt']}",
    "less_than_equal": lambda c: f"must be at most {c['le']}",
    "less_than": lambda c: f"must be less than {c['lt']}",
    "int_type": lambda c: "must be a whole number",
    "float_type": lambda c: "must be a number",
    "finite_number": lambda c: "must be a finite number (not NaN or infinity)",
    "bool_type": lambda c: "must be true or false",
    "string_type": lambda c: "must be text",
    "list_type": lambda c: "must be a list",
    "model_type": lambda c: "must be a mapping",
    "dict_type": lambda c: "must be a mapping",
    "literal_error": lambda c: f"must be one of {c['expected']}",
    "too_short": lambda c: f"must have at least {c['min_length']} item(s)",
    "too_long": lambda c: f"must have at most {c['max_length']} item(s)",
    "string_too_short": lambda c: f"must have at least {c['min_length']} character(s)",
    "string_too_long": lambda c: f"must have at most {c['max_length']} characters",
}
