"""Grad-CAM (captum) on the last convolutional stage of every arch, and maps that land on the object.

The localisation test trains a small model on the mirror's drawings, each placed in the top-right or the
bottom-left quarter of a larger canvas (so its box is known), then checks that the map of most test images
peaks inside the object's box: a map read transposed or mirrored would peak in the other quarter (about 1
in 24 inside). Three compact classes (hamburger, sandwich, pizza), because with two the evidence for one
class can be "not the other" (the background), and long thin boxes (subs, hot dogs) can fall between the
cells of the 1/32-scale map.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ImageDraw
from trainkit import TINY_RUNTIME, needs_offline_weights

from pipeline.core.base.params import RuntimeParams, TrainParams
from pipeline.core.learn import models
from pipeline.core.learn.data import Normalize, decode
from pipeline.core.learn.folders import read_classes, read_split
from pipeline.mirror import drawing
from pipeline.stages.evaluate.explain import gradcam
from pipeline.stages.train.stage import train

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: see trainkit.single_thread

CPU = torch.device("cpu")
#: split folder -> the mirror's MID for its painter and box shape
SCENE_CLASSES = {"Hamburger": "/m/0cdn1", "Pizza": "/m/0663v", "Sandwich": "/m/0l515"}
CANVAS = 128
IMG_SIZE = 160  # the model's input: a 5x5 map at 1/32 scale
SIDE = (0.45, 0.6)  # an object's longer side, as a fraction of the canvas
#: where objects are centred: the top-right or the bottom-left quarter, so that a map read transposed or
#: mirrored would peak in the wrong quarter
QUARTERS = np.array([(0.75, 0.25), (0.25, 0.75)])


@pytest.mark.parametrize("arch", models.ARCHS)
def test_maps_come_from_the_last_conv_stage_of_every_arch(arch: str) -> None:
    torch.manual_seed(0)
    model = models.build_model(arch, 3, "none").eval()
    layer = models.gradcam_layer(model)
    seen = []
    layer.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    maps = gradcam(model, images, torch.tensor([0, 2]), CPU, Normalize(models.IMAGENET_MEAN, models.IMAGENET_STD, CPU))
    head = model.fc if arch.startswith("resnet") else model.classifier[-1]
    assert seen[0] == (2, head.in_features, 2, 2)  # the features the head pools, at 1/32 of the input
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6


def draw_scenes(root: Path, counts: dict[str, int], seed: int = 0) -> dict[str, tuple[int, int, int, int]]:
    """``root/<split>/<class>/*.jpg``: an object at a random place of a background; returns each file's box."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for split, n in counts.items():
        for dirname, mid in SCENE_CLASSES.items():
            folder = root / split / dirname
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = drawing.background((CANVAS, CANVAS), rng)
                aspect = rng.uniform(*drawing.ASPECT[mid])
                side = rng.uniform(*SIDE) * CANVAS
                w, h = (int(side), int(side / aspect)) if aspect >= 1 else (int(side * aspect), int(side))
                cx, cy = QUARTERS[rng.integers(len(QUARTERS))] + rng.uniform(-0.05, 0.05, size=2)
                x0 = int(np.clip(cx * CANVAS - w / 2, 0, CANVAS - w))
                y0 = int(np.clip(cy * CANVAS - h / 2, 0, CANVAS - h))
                drawing.PAINTERS[mid](ImageDraw.Draw(image), (x0, y0, x0 + w, y0 + h), rng)
                path = folder / f"{i:016x}_0.jpg"
                image.save(path, quality=90)
                boxes[path.relative_to(root).as_posix()] = (x0, y0, x0 + w, y0 + h)
    (root / "labels.json").write_text(json.dumps({d: d for d in SCENE_CLASSES}))
    return boxes


@needs_offline_weights
def test_maps_peak_on_the_object_for_a_model_trained_on_the_drawings(tmp_path: Path) -> None:
    root = tmp_path / "splits"
    boxes = draw_scenes(root, {"train": 16, "val": 4, "test": 8})
    p = TrainParams(arch="mobilenet_v2", weights="imagenet", freeze_epochs=1, epochs=1, img_size=IMG_SIZE,
                    batch_size=8, lr=0.005, seed=0)
    result = train(p, RuntimeParams(**TINY_RUNTIME), root)
    test = read_split(root, "test", read_classes(root))
    images = torch.stack([decode(path, IMG_SIZE) for path in test.paths])
    normalize = Normalize(result.info.mean, result.info.std, CPU)
    predicted = result.model.eval()(normalize(images)).argmax(1)
    assert (predicted == torch.tensor(test.targets)).float().mean() >= 0.6  # it learned (chance: 1/3)
    maps = gradcam(result.model, images, predicted, CPU, normalize)
    scale = IMG_SIZE / CANVAS
    inside = 0
    for path, heat in zip(test.paths, maps, strict=True):
        y, x = divmod(int(heat.argmax()), IMG_SIZE)
        x0, y0, x1, y1 = (v * scale for v in boxes[path.relative_to(root).as_posix()])
        inside += x0 <= x < x1 and y0 <= y < y1
    # a box covers about a quarter of the canvas: a peak put at random lands inside 6 times in 24
    assert inside > len(test) / 2, f"{inside} of {len(test)} map peaks inside the object's box"
