"""The train stage keeps the epoch with the best validation accuracy, and shows a batch as the model sees it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from trainkit import TINY_RUNTIME, TINY_TRAIN, make_splits

from pipeline.core.base.params import RuntimeParams, TrainParams
from pipeline.core.learn import models
from pipeline.core.learn.data import decode
from pipeline.core.learn.folders import read_classes, read_split
from pipeline.stages.train import loop
from pipeline.stages.train.loop import EpochStats, best_epoch
from pipeline.stages.train.stage import augmented_sample, batch_figure, train, write_outputs

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: see trainkit.single_thread


def stats(*accuracies: float) -> list[EpochStats]:
    return [EpochStats(i + 1, "unfrozen", 1.0, 1.0, a, 1.0, 1.0) for i, a in enumerate(accuracies)]


def test_best_epoch_is_the_most_accurate_and_the_later_of_equals() -> None:
    assert best_epoch(stats(0.5, 0.9, 0.7)).epoch == 2
    assert best_epoch(stats(0.8, 0.8, 0.6)).epoch == 2
    assert best_epoch(stats(0.7, 0.9, 0.9)).epoch == 3
    assert best_epoch(stats(0.4)).epoch == 1


@pytest.fixture
def scripted_accuracy(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """Validation reports 0.5, 0.9, 0.6 for epochs 1-3 (a later epoch worse); the weights each epoch ended
    with are kept, in order."""
    accuracies = iter([0.5, 0.9, 0.6])
    seen: list[dict[str, torch.Tensor]] = []
    real = loop.validate

    def validate(model, batches, device, normalize):
        loss, _ = real(model, batches, device, normalize)
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return loss, next(accuracies)

    monkeypatch.setattr(loop, "validate", validate)
    return seen


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_worse_last_epoch_does_not_replace_the_best(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      scripted_accuracy: list) -> None:
    root = make_splits(tmp_path / "data/splits", {"train": 8, "val": 2})
    p = TrainParams(**{**TINY_TRAIN, "batch_size": 4})  # 1 frozen + 2 unfrozen epochs
    result = train(p, RuntimeParams(**TINY_RUNTIME), root)
    assert len(scripted_accuracy) == 3 and not same_weights(scripted_accuracy[1], scripted_accuracy[2])
    assert same_weights(result.model.state_dict(), scripted_accuracy[1])  # epoch 2's weights, not epoch 3's
    m = result.metrics
    assert (m["epochs"], m["best_epoch"], m["val_accuracy"]) == (3, 2, 0.9)
    assert m["val_loss"] == result.history[1].val_loss and m["train_loss"] == result.history[1].train_loss
    monkeypatch.chdir(tmp_path)
    write_outputs(result, p)
    assert json.loads(Path("metrics/train.json").read_text())["best_epoch"] == 2
    saved, _ = models.load_checkpoint(Path("models/model.pt"))
    assert same_weights(saved.state_dict(), scripted_accuracy[1])
    with Image.open("reports/train/batch.png") as png:
        assert png.format == "PNG" and png.width > 300


def test_the_batch_grid_shows_augmented_training_images_with_their_labels(tmp_path: Path) -> None:
    root = make_splits(tmp_path / "splits", {"train": 6})
    classes = read_classes(root)
    split = read_split(root, "train", classes)
    p = TrainParams(**{**TINY_TRAIN, "batch_size": 8})
    images, targets = augmented_sample(split, p)
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 32, 32)  # cut from the 37 px cache to img_size
    assert set(targets) == {0, 1}  # 8 of 6 + 6 images: both classes
    again = augmented_sample(split, p)
    assert torch.equal(images, again[0]) and targets == again[1]  # the same grid on every run
    plain = [decode(path, 32) for path in split.paths]
    assert not any(torch.equal(x, q) for x in images for q in plain)  # random crop + flip, not the plain squash
    figure = batch_figure(images, targets, classes.labels)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == [classes.labels[t] for t in targets]
    assert "after augmentation" in figure._suptitle.get_text()

