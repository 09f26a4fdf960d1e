"""fastai's ``fine_tune`` schedule in plain PyTorch, with the rates and augmentation re-measured for small data.

With the body frozen (BatchNorm still trained), one-cycle the head for ``freeze_epochs``; then unfreeze and
one-cycle everything for ``epochs`` at half that peak, spread geometrically over the layer groups from
``1/lr_spread`` of it (earliest layers) to all of it (head). AdamW with fastai's betas, no weight decay on
BatchNorm and bias; random crops (area ``min_scale``..1) and flips; cross-entropy with ``label_smoothing``.
The model kept is the best epoch's by validation accuracy. Why the defaults are not fastai's (measured on
two real sets, ``bench/recipe_bench.py``): BENCHMARKS.md and docs/architecture.md ("train").
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.base.errors import PipelineFailure
from pipeline.core.base.params import TrainParams
from pipeline.core.base.progress import Progress
from pipeline.core.learn.data import Batches, Normalize, augment
from pipeline.core.learn.device import autocast, predict_logits
from pipeline.core.learn.models import layer_groups, set_body_trainable

BETAS = (0.9, 0.99)  # fastai's Adam defaults
EPS = 1e-5


@dataclass(frozen=True)
class Recipe:
    """The numbers of the schedule (``train`` in params.yaml)."""

    lr: float
    weight_decay: float
    freeze_epochs: int
    epochs: int
    img_size: int
    seed: int
    lr_spread: float  # after unfreezing, the earliest layer group learns at 1/lr_spread of the head's rate
    min_scale: float  # smallest random crop, as a share of the image's area
    label_smoothing: float

    @classmethod
    def of(cls, p: TrainParams) -> Recipe:
        """The schedule's numbers from the ``train`` params."""
        return cls(p.lr, p.weight_decay, p.freeze_epochs, p.epochs, p.img_size, p.seed, p.lr_spread, p.min_scale,
                   p.label_smoothing)


@dataclass(frozen=True)
class EpochStats:
    """One epoch's numbers (logged by :mod:`pipeline.stages.train.live` as it ends)."""

    epoch: int
    phase: str  # frozen (head only) or unfrozen
    train_loss: float
    val_loss: float
    val_accuracy: float
    seconds: float  # training part of the epoch only
    images_per_s: float


def one_cycle(model: nn.Module, lrs: list[float], steps: int, weight_decay: float, pct_start: float,
              div: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.OneCycleLR]:
    """AdamW over the trainable parameters, peak ``lrs[i]`` for layer group i, and its one-cycle schedule."""
    groups = []
    for modules, lr in zip(layer_groups(model), lrs, strict=True):
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        weights = [p for p in params if p.ndim > 1]  # BatchNorm and bias terms (1-d) get no weight decay
        others = [p for p in params if p.ndim <= 1]
        for chosen, decay in ((weights, weight_decay), (others, 0.0)):
            if chosen:
                groups.append({"params": chosen, "lr": lr, "weight_decay": decay})
    optimizer = torch.optim.AdamW(groups, betas=BETAS, eps=EPS)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=pct_start, div_factor=div,
        final_div_factor=1e5, base_momentum=0.85, max_momentum=0.95,
    )
    return optimizer, scheduler


def train_step(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """One optimisation step; returns the loss as a device tensor (reading it would sync the GPU)."""
    with autocast(device):
        loss = F.cross_entropy(model(inputs), targets, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach()


def geometric(low: float, high: float, n: int) -> list[float]:
    """``n`` rates from ``low`` to ``high`` evenly spaced on a log scale (fastai's ``even_mults``)."""
    return [low * (high / low) ** (i / (n - 1)) for i in range(n)] if n > 1 else [high]


def best_epoch(history: list[EpochStats]) -> EpochStats:
    """The epoch with the best validation accuracy; of equals, the later one (it has trained longer)."""
    return max(history, key=lambda h: (h.val_accuracy, h.epoch))


def fine_tune(model: nn.Module, train_batches: Batches, val_batches: Batches, recipe: Recipe,
              device: torch.device, normalize: Normalize,
              on_epoch: Callable[[EpochStats], None] | None = None) -> list[EpochStats]:
    """Run the whole schedule on ``model`` (already on ``device``); one :class:`EpochStats` per epoch, each
    also given to ``on_epoch`` as soon as it ends.

    ``model`` ends with the weights of :func:`best_epoch`, not necessarily those of the last one. A loss that
    is no longer a finite number stops the run (a model of NaNs must never be written as if trained).
    """
    generator = torch.Generator(device=device).manual_seed(recipe.seed)
    n_groups = len(layer_groups(model))
    phases = [  # name, epochs, peak rate per layer group, warm-up share, initial divisor (fastai's values)
        ("frozen", recipe.freeze_epochs, [recipe.lr / 10] * (n_groups - 1) + [recipe.lr], 0.99, 25.0),
        ("unfrozen", recipe.epochs, geometric(recipe.lr / 2 / recipe.lr_spread, recipe.lr / 2, n_groups), 0.3, 5.0),
    ]
    total = recipe.freeze_epochs + recipe.epochs
    history: list[EpochStats] = []
    for phase, epochs, lrs, pct_start, div in phases:
        if not epochs:
            continue
        set_body_trainable(model, phase == "unfrozen")
        optimizer, scheduler = one_cycle(model, lrs, epochs * len(train_batches), recipe.weight_decay, pct_start, div)
        for _ in range(epochs):
            desc = f"epoch {len(history) + 1}/{total} ({phase})"
            loss, seconds, images = train_epoch(model, train_batches, optimizer, scheduler, device, normalize,
                                                generator, recipe, desc)
            val_loss, val_accuracy = validate(model, val_batches, device, normalize)
            if not (math.isfinite(loss) and math.isfinite(val_loss)):
                raise PipelineFailure(f"{desc}: the loss is no longer a number (train {loss}, val {val_loss}): "
                                      f"training diverged; lower train.lr (now {recipe.lr:g})")
            stats = EpochStats(len(history) + 1, phase, loss, val_loss, val_accuracy, seconds, images / seconds)
            print(f"{desc}: train_loss {loss:.4f}  val_loss {val_loss:.4f}  "
                  f"val_accuracy {val_accuracy:.3f}  ({stats.images_per_s:.0f} img/s)", flush=True)
            history.append(stats)
            if best_epoch(history) is stats:  # best epoch: keep a copy of these weights (on the device)
                best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if on_epoch is not None:
                on_epoch(stats)
    if history:  # best epoch: the model leaves with the best weights seen
        model.load_state_dict(best_weights)
    return history


def train_epoch(model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device, normalize: Normalize,
                generator: torch.Generator, recipe: Recipe, desc: str) -> tuple[float, float, int]:
    """One pass over the augmented training batches: (mean loss, seconds, images seen)."""
    model.train()
    total = torch.zeros((), device=device)
    count = 0
    start = time.perf_counter()
    with Progress(len(batches), desc, "batch", leave=False) as bar:
        for step, (images, targets) in enumerate(batches, 1):
            inputs = normalize(augment(images, recipe.img_size, generator, recipe.min_scale))
            loss = train_step(model, inputs, targets, optimizer, scheduler, device, recipe.label_smoothing)
            total += loss * len(targets)
            count += len(targets)
            if step % 20 == 0:  # reading the loss syncs the GPU: only now and then
                bar.note(f"loss={total.item() / count:.4f}")
            bar.update()
    mean = total.item() / count
    return mean, time.perf_counter() - start, count


def validate(model: nn.Module, batches: Batches, device: torch.device,
             normalize: Normalize) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) on un-augmented batches."""
    logits, targets = predict_logits(model, batches, device, normalize)
    return F.cross_entropy(logits, targets).item(), (logits.argmax(1) == targets).float().mean().item()
