"""``python -m pipeline.lr_find``: fastai's learning-rate finder, to choose ``train.lr``.

Trains the frozen model (the state ``fine_tune`` starts in) for a few dozen batches while the rate grows
exponentially from ``--start`` to ``--end``, records the smoothed loss, stops once it explodes, and
suggests a rate with fastai's "valley" rule: the middle of the longest stretch where the loss keeps
falling (fastai's other two rules are printed too). Prints the suggestions and saves the loss-vs-rate
plot. Nothing else is written.
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

from pipeline.core.base import paths
from pipeline.core.base.errors import UserError, run_cli
from pipeline.core.base.io import save_figure
from pipeline.core.base.params import load_params
from pipeline.core.base.progress import Progress
from pipeline.core.learn.data import augment
from pipeline.core.learn.models import set_body_trainable
from pipeline.stages.train.loop import BETAS, EPS, train_step
from pipeline.stages.train.stage import Setup, prepare

LR_FIND_PLOT = paths.REPORTS_DIR / "lr_find.png"
SMOOTHING = 0.98  # fastai's exponential moving average of the loss
DIVERGED = 4.0    # stop when the smoothed loss exceeds this multiple of its best


def lr_sweep(setup: Setup, start: float, end: float, iters: int) -> tuple[list[float], list[float]]:
    """(rates, smoothed losses), one per step, until ``iters`` steps or the loss diverges."""
    model, device, p = setup.model, setup.device, setup.params
    set_body_trainable(model, False)
    model.train()
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=start, betas=BETAS,
                                  eps=EPS, weight_decay=p.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=(end / start) ** (1 / max(iters - 1, 1)))
    generator = torch.Generator(device=device).manual_seed(p.seed)
    batches = setup.batches("train")
    stream = itertools.chain.from_iterable(itertools.repeat(batches))  # as many epochs as the sweep needs
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    bar = Progress(iters, "lr_find", "batch")
    for step, (images, targets) in zip(range(iters), stream):
        bar.update()
        lr = scheduler.get_last_lr()[0]
        inputs = setup.normalize(augment(images, p.img_size, generator, p.min_scale))
        loss = train_step(model, inputs, targets, optimizer, scheduler, device, p.label_smoothing).item()
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        if not math.isfinite(smoothed) or smoothed > DIVERGED * best:
            break
        best = min(best, smoothed)
        lrs.append(lr)
        losses.append(smoothed)
    bar.close()
    return lrs, losses


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's ``valley`` suggestion: halfway along the longest run of decreasing loss.

    The longest decreasing subsequence ending at each point marks the valley; its middle is a rate that
    still learns fast but is well short of where the loss turns up.
    """
    n = len(losses)
    longest = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[end] < longest[i]:
                end, start = i, i - longest[i]
    third = (end - start) / 3
    return lrs[start + int(third) + int(third / 2)]


def suggest(lrs: list[float], losses: list[float]) -> dict[str, float]:
    """fastai's three suggestions, on the sweep without its first tenth and last five steps (fastai's trimming).

    ``valley`` (fastai's default, :func:`valley`), ``steep`` (where the loss falls fastest per decade) and
    ``minimum`` (a tenth of the rate at the lowest loss: the last rate before training becomes unstable).
    """
    trimmed = slice(len(lrs) // 10, -5) if len(lrs) > 20 else slice(None)
    lrs, losses = lrs[trimmed], losses[trimmed]
    if len(lrs) < 2:
        raise UserError("lr_find: the loss diverged at once; lower --start or check the data")
    slopes = [(losses[i + 1] - losses[i]) / math.log(lrs[i + 1] / lrs[i]) for i in range(len(lrs) - 1)]
    return {
        "valley": valley(lrs, losses),
        "steep": lrs[min(range(len(slopes)), key=slopes.__getitem__)],
        "minimum": lrs[min(range(len(losses)), key=losses.__getitem__)] / 10,
    }


def sweep_figure(lrs: list[float], losses: list[float], suggestions: dict[str, float]) -> Figure:
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    ax.plot(lrs, losses)
    for (name, lr), style in zip(suggestions.items(), ("--", ":", "-."), strict=True):
        ax.axvline(lr, color="tab:red", linestyle=style, label=f"{name}: {lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return figure


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.lr_find",
        description="Find a learning rate for train.lr (fastai's lr_find) on data/splits/train with the model "
        "params.yaml `train` describes; prints the suggestion and saves the loss-vs-rate plot.",
    )
    parser.add_argument("--start", type=float, default=1e-7, help="first rate (default 1e-7)")
    parser.add_argument("--end", type=float, default=10.0, help="last rate (default 10)")
    parser.add_argument("--iters", type=int, default=100, help="steps of the sweep (default 100)")
    parser.add_argument("--out", type=Path, default=LR_FIND_PLOT, help=f"plot file (default {LR_FIND_PLOT})")
    args = parser.parse_args(argv)
    if not 0 < args.start < args.end or args.iters < 2:
        raise UserError("lr_find needs 0 < --start < --end and --iters >= 2")
    params = load_params()
    setup = prepare(params.train, params.runtime, paths.SPLITS_DIR)
    lrs, losses = lr_sweep(setup, args.start, args.end, args.iters)
    suggestions = suggest(lrs, losses)
    save_figure(sweep_figure(lrs, losses, suggestions), args.out)
    print(f"suggested lr: {suggestions['valley']:.2e} (fastai's valley; steepest {suggestions['steep']:.2e}, "
          f"minimum/10 {suggestions['minimum']:.2e}): set train.lr in params.yaml; plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
