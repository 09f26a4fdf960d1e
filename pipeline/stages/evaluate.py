"""``python -m pipeline.stages.evaluate``: judge ``models/model.pt`` on the test split (the DVC stage ``evaluate``).

Writes ``metrics/eval.json`` (top-1, top-3/top-5 where there are more classes than that, per-class
precision/recall/F1), ``plots/confusion.csv`` (one row per test image, for dvc's confusion template),
and ``reports/evaluate/confusion.png`` + ``worst.png`` (the most confident mistakes, to see what fools it).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from pipeline.core import paths
from pipeline.core.errors import run_cli
from pipeline.core.io import replace_dir, save_figure, write_csv, write_json
from pipeline.core.learn.data import Classes, Normalize, Split, make_batches, read_split
from pipeline.core.learn.device import pick_device, predict_logits, to_device
from pipeline.core.learn.models import load_checkpoint
from pipeline.core.machine import loader_workers
from pipeline.core.params import RuntimeParams, load_params

EVAL_METRICS = paths.METRICS_DIR / "eval.json"
CONFUSION_CSV = paths.PLOTS_DIR / "confusion.csv"
EVAL_REPORT = paths.REPORTS_DIR / "evaluate"
TOP_K = (3, 5)
THUMBNAIL = 160


@dataclass
class Evaluation:
    """The model's probabilities for every test image, and the metrics derived from them."""

    split: Split
    labels: list[str]
    probs: torch.Tensor  # [N, C]
    metrics: dict

    @property
    def predicted(self) -> list[int]:
        return self.probs.argmax(1).tolist()


def classification_metrics(probs: torch.Tensor, targets: torch.Tensor, labels: list[str]) -> dict:
    """Top-1, top-k (only for k < number of classes, where it means something), per-class P/R/F1, macro means.

    A class never predicted has precision 0 (not undefined), as in scikit-learn's ``zero_division=0``.
    """
    n, c = probs.shape
    ranked = probs.argsort(dim=1, descending=True)
    hits = ranked == targets[:, None]
    metrics: dict = {"test_images": n, "top1": hits[:, 0].float().mean().item()}
    for k in TOP_K:
        if c > k:
            metrics[f"top{k}"] = hits[:, :k].any(1).float().mean().item()
    matrix = confusion_matrix(ranked[:, 0], targets, c).double()
    tp = matrix.diag()
    precision = torch.where(matrix.sum(0) > 0, tp / matrix.sum(0).clamp(min=1), 0.0)
    recall = torch.where(matrix.sum(1) > 0, tp / matrix.sum(1).clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    metrics["macro_precision"] = precision.mean().item()
    metrics["macro_recall"] = recall.mean().item()
    metrics["macro_f1"] = f1.mean().item()
    metrics["per_class"] = {
        label: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
                "support": int(matrix[i].sum().item())}
        for i, label in enumerate(labels)
    }
    return metrics


def confusion_matrix(predicted: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts with rows = actual class, columns = predicted class."""
    return torch.bincount(targets * num_classes + predicted, minlength=num_classes**2).view(num_classes, num_classes)


def evaluate(runtime: RuntimeParams, model_path: Path, splits_dir: Path) -> Evaluation:
    """Run the saved model over ``splits_dir/test`` with its own preprocessing; nothing is written."""
    model, info = load_checkpoint(model_path)
    device = pick_device(runtime.device)
    split = read_split(splits_dir, "test", Classes(info.dirnames, info.labels))
    batches = make_batches(split, info.img_size, runtime.eval_batch_size, shuffle=False, device=device,
                           workers=loader_workers(runtime.loader_workers), cache_mb=0)  # one pass: streaming is enough
    logits, targets = predict_logits(to_device(model, device), batches, device, Normalize(info.mean, info.std, device))
    probs = logits.softmax(1)
    return Evaluation(split, info.labels, probs, classification_metrics(probs, targets, info.labels))


def write_outputs(result: Evaluation, worst: int) -> None:
    """metrics/eval.json, plots/confusion.csv and the two report figures."""
    write_json(EVAL_METRICS, result.metrics)
    names = result.labels
    write_csv(CONFUSION_CSV, ("actual", "predicted"),
              [(names[t], names[p]) for t, p in zip(result.split.targets, result.predicted, strict=True)])
    matrix = confusion_matrix(torch.tensor(result.predicted), torch.tensor(result.split.targets), len(names))
    with replace_dir(EVAL_REPORT) as folder:
        save_figure(confusion_figure(matrix, names), folder / "confusion.png")
        save_figure(worst_figure(result, worst), folder / "worst.png")


def confusion_figure(matrix: torch.Tensor, labels: list[str]) -> Figure:
    """The confusion matrix as a heat map with the count in every cell."""
    c = len(labels)
    side = min(max(4.0, 0.5 * c + 2), 30.0)
    figure = Figure(figsize=(side + 1, side))
    ax = figure.subplots()
    shown = ax.imshow(matrix.numpy(), cmap="Blues")
    figure.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_xticks(range(c), labels, rotation=45, ha="right")
    ax.set_yticks(range(c), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    top = matrix.max().item() or 1
    for (i, j), count in np.ndenumerate(matrix.numpy()):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
    ax.set_title(f"confusion matrix ({int(matrix.sum())} test images)")
    return figure


def worst_figure(result: Evaluation, count: int) -> Figure:
    """The ``count`` mistakes the model was most sure of, each titled actual / predicted (probability)."""
    predicted = torch.tensor(result.predicted)
    wrong = (predicted != torch.tensor(result.split.targets)).nonzero().flatten()
    confidence = result.probs[wrong, predicted[wrong]]
    chosen = wrong[confidence.argsort(descending=True)][:count].tolist()
    if not chosen:
        figure = Figure(figsize=(4, 1.5))
        figure.text(0.5, 0.5, f"no mistakes on {len(result.split)} test images", ha="center", va="center")
        return figure
    cols = min(4, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    figure = Figure(figsize=(3 * cols, 3.3 * rows))
    axes = np.atleast_1d(figure.subplots(rows, cols, squeeze=False)).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, chosen):
        ax.imshow(thumbnail(result.split.paths[i]))
        ax.set_title(f"actual: {result.labels[result.split.targets[i]]}\n"
                     f"predicted: {result.labels[predicted[i]]} ({result.probs[i, predicted[i]]:.2f})", fontsize=9)
    figure.suptitle("most confident mistakes")
    return figure


def thumbnail(path: Path) -> np.ndarray:
    """The image as people see it (upright, aspect kept), small enough for a grid."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        return np.asarray(image)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.evaluate",
        description="Evaluate models/model.pt on data/splits/test: top-1/top-k accuracy, per-class precision/"
        "recall/F1 (metrics/eval.json), confusion matrix (plots/confusion.csv, reports/evaluate/confusion.png) "
        "and the most confident mistakes (reports/evaluate/worst.png).",
    )
    parser.parse_args(argv)
    params = load_params()
    result = evaluate(params.runtime, paths.MODEL, paths.SPLITS_DIR)
    write_outputs(result, params.evaluate.worst)
    m = result.metrics
    extra = "".join(f", top{k} {m[f'top{k}']:.3f}" for k in TOP_K if f"top{k}" in m)
    print(f"test: top1 {m['top1']:.3f}{extra}, macro F1 {m['macro_f1']:.3f} on {m['test_images']} images "
          f"-> {EVAL_METRICS}, {EVAL_REPORT}/")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
