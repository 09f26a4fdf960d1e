"""The evaluate stage: judge ``models/model.pt`` on the test split (the DVC stage ``evaluate``).

Writes ``metrics/eval.json`` (top-1, top-3/top-5 where there are more classes than that, per-class
precision/recall/F1, the most confused pairs), ``plots/confusion.csv`` (one row per test image, for dvc's
confusion template), and the report ``reports/evaluate/``: ``index.html`` (the numbers and the pictures),
``confusion.png``, ``worst.png`` (the most confident mistakes, to see what fools it) and ``gradcam.png``
(Grad-CAM maps of the worst mistakes and of a sample of right answers: where the model looked).
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from pipeline.core.base import paths
from pipeline.core.base.io import replace_dir, save_figure, write_csv, write_json, write_text
from pipeline.core.base.params import Params, RuntimeParams
from pipeline.core.base.stages import Summary
from pipeline.core.compute.machine import loader_workers
from pipeline.core.learn.data import Normalize, decode, make_batches
from pipeline.core.learn.device import pick_device, predict_logits, to_device
from pipeline.core.learn.folders import Classes, Split, read_split
from pipeline.core.learn.models import gradcam_layer, load_checkpoint
from pipeline.stages.evaluate.explain import gradcam

EVAL_METRICS = paths.METRICS_DIR / "eval.json"
CONFUSION_CSV = paths.PLOTS_DIR / "confusion.csv"
EVAL_REPORT = paths.REPORTS_DIR / "evaluate"
TOP_K = (3, 5)
THUMBNAIL = 160


@dataclass(frozen=True)
class Explained:
    """One test image as the model saw it, with the Grad-CAM map of the class it predicted."""

    index: int             # in the test split
    image: torch.Tensor    # uint8 [3, S, S]
    heatmap: torch.Tensor  # [S, S], 0..1


@dataclass
class Evaluation:
    """The model's probabilities for every test image, the metrics derived from them, and explanations."""

    split: Split
    labels: list[str]
    probs: torch.Tensor  # [N, C]
    metrics: dict
    explained: list[Explained] = field(default_factory=list)
    explained_layer: str = ""  # which layer the maps are of

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
    metrics["most_confused"] = most_confused(matrix, labels)
    return metrics


def most_confused(matrix: torch.Tensor, labels: list[str], min_count: int = 1) -> list[dict]:
    """fastai's ``most_confused``: every (actual, predicted) pair with ``min_count`` or more mistakes,
    largest first (equal counts in the classes' order), as ``{actual, predicted, count}``."""
    pairs = [(-int(matrix[a, p]), a, p) for a in range(len(labels)) for p in range(len(labels))
             if a != p and matrix[a, p] >= min_count]
    return [{"actual": labels[a], "predicted": labels[p], "count": -n} for n, a, p in sorted(pairs)]


def confusion_matrix(predicted: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts with rows = actual class, columns = predicted class."""
    return torch.bincount(targets * num_classes + predicted, minlength=num_classes**2).view(num_classes, num_classes)


def evaluate(runtime: RuntimeParams, model_path: Path, splits_dir: Path, explain: int = 0) -> Evaluation:
    """Run the saved model over ``splits_dir/test`` with its own preprocessing; nothing is written.

    ``explain``: Grad-CAM maps for that many of the most confident mistakes and as many right answers.
    """
    model, info = load_checkpoint(model_path)
    device = pick_device(runtime.device)
    split = read_split(splits_dir, "test", Classes(info.dirnames, info.labels))
    batches = make_batches(split, info.img_size, runtime.eval_batch_size, shuffle=False, device=device,
                           workers=loader_workers(runtime.loader_workers), cache_mb=0)  # one pass: streaming is enough
    model, normalize = to_device(model, device), Normalize(info.mean, info.std, device)
    logits, targets = predict_logits(model, batches, device, normalize)
    probs = logits.softmax(1)
    result = Evaluation(split, info.labels, probs, classification_metrics(probs, targets, info.labels))
    chosen = worst_mistakes(result, explain) + right_sample(result, explain)
    if chosen:
        images = torch.stack([decode(split.paths[i], info.img_size) for i in chosen])
        maps = gradcam(model, images, probs.argmax(1)[chosen], device, normalize, runtime.eval_batch_size)
        result.explained = [Explained(i, image, heat) for i, image, heat in zip(chosen, images, maps, strict=True)]
        result.explained_layer = layer_name(model)
    return result


def layer_name(model: torch.nn.Module) -> str:
    """The Grad-CAM layer's name inside ``model`` (``layer4``, ``features.18``), for the report."""
    layer = gradcam_layer(model)
    return next(name for name, module in model.named_modules() if module is layer)


def worst_mistakes(result: Evaluation, count: int) -> list[int]:
    """Indices of the ``count`` mistakes made with the highest probability, most confident first."""
    predicted = torch.tensor(result.predicted, dtype=torch.int64)
    wrong = (predicted != torch.tensor(result.split.targets)).nonzero().flatten()
    confidence = result.probs[wrong, predicted[wrong]]
    return wrong[confidence.argsort(descending=True, stable=True)][:count].tolist()


def right_sample(result: Evaluation, count: int) -> list[int]:
    """Up to ``count`` right answers spread evenly over the test split (path order, so every class shows)."""
    right = [i for i, (p, t) in enumerate(zip(result.predicted, result.split.targets, strict=True)) if p == t]
    if not right or count <= 0:
        return []
    picks = np.linspace(0, len(right) - 1, min(count, len(right))).round().astype(int)
    return [right[k] for k in picks]


def write_outputs(result: Evaluation, worst: int) -> None:
    """metrics/eval.json, plots/confusion.csv and the report: its page and figures."""
    write_json(EVAL_METRICS, result.metrics)
    names = result.labels
    write_csv(CONFUSION_CSV, ("actual", "predicted"),
              [(names[t], names[p]) for t, p in zip(result.split.targets, result.predicted, strict=True)])
    matrix = confusion_matrix(torch.tensor(result.predicted), torch.tensor(result.split.targets), len(names))
    with replace_dir(EVAL_REPORT) as folder:
        save_figure(confusion_figure(matrix, names), folder / "confusion.png")
        save_figure(worst_figure(result, worst), folder / "worst.png")
        figures = ["confusion.png", "worst.png"]
        if result.explained:
            save_figure(gradcam_figure(result), folder / "gradcam.png")
            figures.append("gradcam.png")
        write_text(folder / "index.html", report_page(result.metrics, figures))


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
    chosen = worst_mistakes(result, count)
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


def gradcam_figure(result: Evaluation) -> Figure:
    """Each explained image as the model saw it (squashed square) under its Grad-CAM map, mistakes first."""
    shown = result.explained
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    figure = Figure(figsize=(3 * cols, 3.3 * rows + 0.5))
    axes = np.atleast_1d(figure.subplots(rows, cols, squeeze=False)).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, item in zip(axes, shown):
        actual, predicted = result.split.targets[item.index], result.predicted[item.index]
        ax.imshow(item.image.permute(1, 2, 0).numpy())
        ax.imshow(item.heatmap.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"actual: {result.labels[actual]}\npredicted: {result.labels[predicted]} "
                     f"({result.probs[item.index, predicted]:.2f})", fontsize=9,
                     color="tab:red" if actual != predicted else "tab:green")
    mistakes = sum(result.split.targets[e.index] != result.predicted[e.index] for e in shown)
    wrong = f"the {mistakes} most confident mistakes (red), then " if mistakes else "no mistakes; "
    figure.suptitle(f"Grad-CAM of the predicted class at {result.explained_layer}: {wrong}"
                    f"{len(shown) - mistakes} right answers (green)")
    return figure


def report_page(metrics: dict, figures: list[str]) -> str:
    """``index.html``: headline numbers, per-class table, most confused pairs, then the figures.

    Labels come from Open Images (the internet): every one is HTML-escaped.
    """
    esc = html.escape
    heads = [k for k in ("top1", "top3", "top5", "macro_precision", "macro_recall", "macro_f1") if k in metrics]
    rows = "".join(f"<tr><td>{esc(label)}</td>" + "".join(f"<td>{v[k]:.3f}</td>" for k in ("precision", "recall", "f1"))
                   + f"<td>{v['support']}</td></tr>" for label, v in metrics["per_class"].items())
    confused = "".join(f"<tr><td>{esc(c['actual'])}</td><td>{esc(c['predicted'])}</td><td>{c['count']}</td></tr>"
                       for c in metrics["most_confused"]) or "<tr><td colspan=3>no mistakes</td></tr>"
    pictures = "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in figures)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Evaluation</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:left}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>Evaluation on {metrics['test_images']} test images</h1><p>"
        + ", ".join(f"{k} <b>{metrics[k]:.3f}</b>" for k in heads) + "</p>"
        "<h2>Per class</h2><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
        f"{rows}</table>"
        "<h2>Most confused (actual, predicted, count)</h2><table><tr><th>actual</th><th>predicted</th><th>count</th></tr>"
        f"{confused}</table><h2>Figures</h2>{pictures}</body></html>\n"
    )


def thumbnail(path: Path) -> np.ndarray:
    """The image as people see it (upright, aspect kept), small enough for a grid."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        return np.asarray(image)


@dataclass(frozen=True)
class EvaluateSummary(Summary):
    """The test metrics (metrics/eval.json's numbers)."""

    metrics: dict

    def lines(self) -> list[str]:
        m = self.metrics
        extra = "".join(f", top{k} {m[f'top{k}']:.3f}" for k in TOP_K if f"top{k}" in m)
        return [f"test: top1 {m['top1']:.3f}{extra}, macro F1 {m['macro_f1']:.3f} on {m['test_images']} images "
                f"-> {EVAL_METRICS}, {EVAL_REPORT}/"]


def run(params: Params) -> EvaluateSummary:
    """The stage: ``models/model.pt`` on the test split, its metrics, plots and report."""
    result = evaluate(params.runtime, paths.MODEL, paths.SPLITS_DIR, params.evaluate.gradcam)
    write_outputs(result, params.evaluate.worst)
    return EvaluateSummary(result.metrics)
