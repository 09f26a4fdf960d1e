"""The train stage's work: set up from params, fine-tune, and write the stage's files.

``python -m pipeline.stages.train`` runs it; ``python -m pipeline.lr_find`` shares its set-up so the rate it
suggests is found on exactly the model and batches training will use.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn

from pipeline.core.base import paths
from pipeline.core.base.errors import UserError
from pipeline.core.base.io import replace_dir, save_figure, write_json
from pipeline.core.base.params import Params, RuntimeParams, TrainParams
from pipeline.core.base.stages import Summary
from pipeline.core.compute.machine import loader_workers
from pipeline.core.learn.data import (
    TRAIN_CACHE_RATIO,
    Batches,
    CachedBatches,
    Normalize,
    augment,
    decode,
    fits_cache,
    make_batches,
)
from pipeline.core.learn.device import pick_device, seed_everything, to_device
from pipeline.core.learn.folders import Classes, Split, read_classes, read_split
from pipeline.core.learn.models import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, build_model, save_checkpoint
from pipeline.core.learn.shards import ShardBatches, matching_shards
from pipeline.stages.train.live import epoch_logger
from pipeline.stages.train.loop import EpochStats, Recipe, best_epoch, fine_tune

TRAIN_METRICS = paths.METRICS_DIR / "train.json"
TRAIN_REPORT = paths.REPORTS_DIR / "train"
#: most images shown in reports/train/batch.png (a batch of 256 would be unreadable)
BATCH_GRID_MAX = 64
BATCH_GRID_COLUMNS = 8


@dataclass
class Setup:
    """A freshly built model on its device, and how to feed it."""

    params: TrainParams
    runtime: RuntimeParams
    splits_dir: Path
    device: torch.device
    classes: Classes
    model: nn.Module
    normalize: Normalize
    shards_dir: Path | None = None  # WebDataset shards of the splits, streamed when the cache does not fit

    def batches(self, split: str) -> Batches | ShardBatches:
        """``train``: shuffled, cached larger for random crops; any other split: in order, at img_size.

        Past the cache budget: streamed from the split's shards when they hold exactly these files, else
        from the class folders.
        """
        p, r, training = self.params, self.runtime, split == "train"
        size = round(p.img_size * TRAIN_CACHE_RATIO) if training else p.img_size
        files, workers = read_split(self.splits_dir, split, self.classes), loader_workers(r.loader_workers)
        if self.shards_dir is not None and not fits_cache(len(files), size, self.device, r.cache_mb):
            shards = matching_shards(self.shards_dir, files, self.splits_dir, self.classes)
            if shards:
                return ShardBatches(shards, len(files), size, p.batch_size, len(self.classes.dirnames),
                                    shuffle=training, seed=p.seed, workers=workers, device=self.device)
        return make_batches(files, size, p.batch_size, shuffle=training, device=self.device, workers=workers,
                            cache_mb=r.cache_mb, seed=p.seed)


def prepare(p: TrainParams, runtime: RuntimeParams, splits_dir: Path, shards_dir: Path | None = None) -> Setup:
    """Seed, read the classes and build ``p.arch`` with ``p.weights`` on ``runtime.device``."""
    device = pick_device(runtime.device)
    seed_everything(p.seed)
    classes = read_classes(splits_dir)
    model = to_device(build_model(p.arch, len(classes.dirnames), p.weights), device)
    return Setup(p, runtime, splits_dir, device, classes, model, Normalize(IMAGENET_MEAN, IMAGENET_STD, device),
                 shards_dir)


@dataclass
class Trained:
    """A fine-tuned model (on the CPU) and what the run measured."""

    model: nn.Module
    info: ModelInfo
    history: list[EpochStats]
    metrics: dict
    batch: tuple[torch.Tensor, list[int]]  # a training batch as the model sees it (uint8) and its classes


@dataclass(frozen=True)
class TrainSummary(Summary):
    """The training metrics (metrics/train.json's numbers)."""

    metrics: dict

    def lines(self) -> list[str]:
        m = self.metrics
        return [f"trained {m['arch']} on {m['train_images']} images ({m['device']}, {m['data']}): val_accuracy "
                f"{m['val_accuracy']:.3f} (epoch {m['best_epoch']} of {m['epochs']}) -> {paths.MODEL}"]


def run(params: Params) -> TrainSummary:
    """The stage: train on ``data/splits`` (or its shards), log each epoch with dvclive, write the model,
    its metrics and figures."""
    with epoch_logger() as log_epoch:
        result = train(params.train, params.runtime, paths.SPLITS_DIR, paths.SHARDS_DIR, log_epoch)
        write_outputs(result, params.train)
    return TrainSummary(result.metrics)


def train(p: TrainParams, runtime: RuntimeParams, splits_dir: Path, shards_dir: Path | None = None,
          on_epoch: Callable[[EpochStats], None] | None = None) -> Trained:
    """Fine-tune ``p.arch`` on ``splits_dir/{train,val}`` with fastai's recipe (streaming from the shards in
    ``shards_dir`` when the cache does not fit); nothing is written here (``on_epoch`` sees each epoch as it
    ends: the stage logs it with dvclive)."""
    if p.freeze_epochs + p.epochs == 0:
        raise UserError("params.yaml: train.freeze_epochs + train.epochs must be at least 1")
    setup = prepare(p, runtime, splits_dir, shards_dir)
    started = time.perf_counter()
    train_batches, val_batches = setup.batches("train"), setup.batches("val")
    recipe = Recipe.of(p)
    history = fine_tune(setup.model, train_batches, val_batches, recipe, setup.device, setup.normalize, on_epoch)
    classes, best = setup.classes, best_epoch(history)
    info = ModelInfo(p.arch, classes.labels, classes.dirnames, p.img_size, list(IMAGENET_MEAN), list(IMAGENET_STD))
    metrics = {
        "arch": p.arch,
        "weights": p.weights,
        "device": setup.device.type,
        "data": data_kind(train_batches),
        "train_images": train_batches.num_images,
        "val_images": val_batches.num_images,
        "epochs": len(history),
        "best_epoch": best.epoch,  # the epoch whose weights models/model.pt holds; the three below are its own
        "train_loss": best.train_loss,
        "val_loss": best.val_loss,
        "val_accuracy": best.val_accuracy,
        "train_images_per_s": round(sum(h.images_per_s for h in history) / len(history), 1),
        "seconds": round(time.perf_counter() - started, 2),
    }
    batch = augmented_sample(read_split(splits_dir, "train", classes), p)
    return Trained(setup.model.cpu(), info, history, metrics, batch)


def data_kind(batches: Batches | ShardBatches) -> str:
    """How the training images reached the model: ``cached``, ``shards`` or ``streamed`` (class folders)."""
    return {CachedBatches: "cached", ShardBatches: "shards"}.get(type(batches), "streamed")


def augmented_sample(split: Split, p: TrainParams) -> tuple[torch.Tensor, list[int]]:
    """Up to a batch of training images after the training augmentation, for people to look at.

    Decoded from the files at the training cache's size and augmented with the stage's own ``augment``,
    with their own generators: drawing them leaves the training run's random streams untouched.
    """
    count = min(p.batch_size, BATCH_GRID_MAX, len(split))
    chosen = np.random.default_rng(p.seed).choice(len(split), size=count, replace=False)
    size = round(p.img_size * TRAIN_CACHE_RATIO)
    images = torch.stack([decode(split.paths[i], size) for i in chosen])
    augmented = augment(images, p.img_size, torch.Generator().manual_seed(p.seed), p.min_scale)
    return augmented.round().clamp(0, 255).to(torch.uint8), [split.targets[i] for i in chosen]


def write_outputs(result: Trained, p: TrainParams) -> None:
    """The stage's files: model, metrics, the curves as a PNG for people (dvclive wrote them for dvc plots
    as the epochs ended: :mod:`pipeline.stages.train.live`)."""
    save_checkpoint(paths.MODEL, result.model, result.info, extra={"train": p.model_dump(mode="json")})
    write_json(TRAIN_METRICS, result.metrics)
    with replace_dir(TRAIN_REPORT) as folder:
        save_figure(curves_figure(result.history), folder / "curves.png")
        save_figure(batch_figure(*result.batch, result.info.labels), folder / "batch.png")


def batch_figure(images: torch.Tensor, targets: list[int], labels: list[str]) -> Figure:
    """A training batch as the model sees it (after random crop and flip), each image titled by its label."""
    cols = min(BATCH_GRID_COLUMNS, len(targets))
    rows = math.ceil(len(targets) / cols)
    figure = Figure(figsize=(1.6 * cols, 1.8 * rows + 0.4))
    axes = np.atleast_1d(figure.subplots(rows, cols, squeeze=False)).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, image, target in zip(axes, images, targets):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(labels[target], fontsize=8)
    figure.suptitle(f"a training batch after augmentation ({len(targets)} images, {images.shape[-1]} px)")
    return figure


def curves_figure(history: list[EpochStats]) -> Figure:
    """Losses and validation accuracy per epoch, with the unfreeze point marked."""
    figure = Figure(figsize=(9, 3.5))
    loss_ax, acc_ax = figure.subplots(1, 2)
    epochs = [h.epoch for h in history]
    loss_ax.plot(epochs, [h.train_loss for h in history], "o-", label="train")
    loss_ax.plot(epochs, [h.val_loss for h in history], "o-", label="val")
    acc_ax.plot(epochs, [h.val_accuracy for h in history], "o-", color="tab:green")
    frozen = [h.epoch for h in history if h.phase == "frozen"]
    for ax, title in ((loss_ax, "cross-entropy loss"), (acc_ax, "val accuracy")):
        if frozen and len(frozen) < len(history):
            ax.axvline(max(frozen) + 0.5, color="grey", linestyle=":", label="unfreeze")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    loss_ax.legend()
    acc_ax.set_ylim(0, 1.02)
    return figure
