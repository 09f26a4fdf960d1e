"""The audit on real labelled images with known wrong labels: does it find them, and does rejecting them help?

Data: scikit-learn's ``load_digits`` (1,797 real handwritten digits, 8x8, 17 grey levels), upscaled to
``--size`` px RGB and written as class folders (``digit_<n>/``); a seeded 70/15/15 split into train, val and
test; then 0, 5, 10 and 20 % of the **train and val** labels flipped to another digit at random (seeded).
The test labels stay true: they are the yardstick.

Per noise level, in one run:

- ``audit``: :func:`pipeline.core.audit.ledger.audit` on the train+val images with the params' defaults:
  precision and recall of the crops it calls ``label_issue`` against the flipped ones;
- ``naive``: the K lowest given-label probabilities of one logistic regression trained on all the noisy
  labels (K = the number the audit flags), the same embeddings: what confident learning must beat;
- ``test top-1`` (``--train``): the train stage (:func:`pipeline.stages.train.stage.train`, the params'
  recipe at ``--train-size`` px, 1 frozen + ``--epochs`` epochs) on the noisy splits, and on the splits without the audit's rejects; top-1 on
  the true test labels. Without ``--train``, a logistic regression on the embeddings stands in (``lr top-1``).

Cost: seconds per 1,000 images for embeddings (all computed: a fresh cache), quality checks and label issues.

Usage: ``python bench/audit_bench.py [--size 32] [--noise 0 0.1] [--train [--train-size 32] [--epochs 2]]
[--out bench/out/audit]``
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from auditkit import digit_images, flip_labels  # noqa: E402

from pipeline.core.audit import findings  # noqa: E402
from pipeline.core.audit.ledger import audit, measure  # noqa: E402
from pipeline.core.base.params import AuditParams, RuntimeParams, TrainParams  # noqa: E402

NOISE = (0.0, 0.05, 0.10, 0.20)
SPLITS = ("train", "val", "test")


def split_of(n: int, seed: int = 0) -> np.ndarray:
    """A seeded 70/15/15 assignment of ``n`` images to train, val, test."""
    order = np.random.default_rng(seed).permutation(n)
    split = np.empty(n, dtype=object)
    split[order[: int(0.7 * n)]], split[order[int(0.7 * n): int(0.85 * n)]] = "train", "val"
    split[order[int(0.85 * n):]] = "test"
    return split


def write_images(folder: Path, images: list) -> list[Path]:
    """Every image once, by index (the labels live in the tables: the same bytes serve every noise level)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, image in enumerate(images):
        files.append(folder / f"{i:05d}.png")
        if not files[-1].exists():
            image.save(files[-1])
    return files


def write_splits(root: Path, files: list[Path], labels: np.ndarray, split: np.ndarray, keep: np.ndarray) -> None:
    """``root/{train,val,test}/digit_<label>/`` hard links of the kept images."""
    shutil.rmtree(root, ignore_errors=True)
    for i in np.flatnonzero(keep):
        target = root / split[i] / f"digit_{labels[i]}" / files[i].name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.hardlink_to(files[i])


def train_top1(root: Path, size: int, epochs: int) -> float:
    """The train stage's recipe on ``root``'s splits; top-1 of its best epoch on ``root/test``."""
    from pipeline.core.learn.data import Normalize, make_batches
    from pipeline.core.learn.folders import read_classes, read_split
    from pipeline.core.learn.device import pick_device, predict_logits
    from pipeline.stages.train.stage import train

    recipe = TrainParams(img_size=size, batch_size=64, freeze_epochs=1, epochs=epochs)
    runtime = RuntimeParams(device="auto", loader_workers=0)
    trained = train(recipe, runtime, root)
    device = pick_device("auto")
    classes = read_classes(root)
    test = read_split(root, "test", classes)
    batches = make_batches(test, size, 256, shuffle=False, device=device, workers=0, cache_mb=-1)
    model = trained.model.to(device)
    logits, targets = predict_logits(model, batches, device, Normalize(trained.info.mean, trained.info.std, device))
    return float((logits.argmax(1) == targets).float().mean())


def lr_top1(features: np.ndarray, labels: np.ndarray, fit: np.ndarray, test: np.ndarray, truth: np.ndarray) -> float:
    model = findings.linear_model().fit(features[fit], labels[fit])
    return float((model.predict(features[test]) == truth[test]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32, help="digits upscaled to this many px")
    parser.add_argument("--train", action="store_true", help="also train the train stage's model per setting")
    parser.add_argument("--train-size", type=int, default=32, help="the train stage's img_size (digits are 8 px)")
    parser.add_argument("--epochs", type=int, default=2, help="the train stage's unfrozen epochs (after 1 frozen)")
    parser.add_argument("--noise", type=float, nargs="+", default=list(NOISE), help="fractions of labels flipped")
    parser.add_argument("--out", type=Path, default=Path("bench/out/audit"))
    parser.add_argument("--reuse-embeddings", action="store_true",
                        help="keep the embedding cache of an earlier run (its embedding cost is then not measured)")
    args = parser.parse_args()
    torch.manual_seed(0)
    images, truth = digit_images(args.size)
    files = write_images(args.out / "images", images)
    split = split_of(len(truth))
    audited = split != "test"
    params = AuditParams()
    cache = args.out / "embeddings"
    if not args.reuse_embeddings:
        shutil.rmtree(cache, ignore_errors=True)
    measured = measure(files, params.img_size, cache)  # every embedding, computed once into a fresh cache
    vectors = measured.features
    per_1000 = len(files) / 1000
    cost = {"read": measured.seconds["read"] / per_1000, "quality": measured.seconds["quality"] / per_1000,
            "embeddings": measured.seconds["embeddings"] / per_1000}
    rows = []
    for noise in args.noise:
        labels = truth.copy()
        labels[audited] = flip_labels(truth[audited], noise, seed=int(noise * 100))
        flipped = labels != truth
        table = pd.DataFrame({"Label": [f"digit_{label}" for label in labels[audited]]})
        start = time.perf_counter()
        ledger, summary = audit(table, [files[i] for i in np.flatnonzero(audited)], params, cache)
        assert summary["embeddings_computed"] == 0
        cost.setdefault("issues", summary["seconds"]["issues"] / (len(ledger) / 1000))
        found = (ledger["issue"] == "label_issue").to_numpy()
        truly = flipped[audited]
        k = int(found.sum())
        naive = findings.naive_label_issues(vectors[audited], labels[audited], k)
        rejected = np.zeros(len(truth), dtype=bool)
        rejected[np.flatnonzero(audited)] = (ledger["decision"] == "rejected").to_numpy()
        fit = split == "train"
        row = {
            "noise": f"{noise:.0%}", "flipped": int(truly.sum()), "flagged": k,
            "precision": _ratio((found & truly).sum(), k), "recall": _ratio((found & truly).sum(), truly.sum()),
            "naive precision": _ratio((naive & truly).sum(), k),
            "naive recall": _ratio((naive & truly).sum(), truly.sum()),
            "rejected": int(rejected.sum()),
            "lr top-1 noisy": lr_top1(vectors, labels, fit, split == "test", truth),
            "lr top-1 audited": lr_top1(vectors, labels, fit & ~rejected, split == "test", truth),
            "seconds": round(time.perf_counter() - start, 1),
        }
        if args.train:
            keep_all = np.ones(len(truth), dtype=bool)
            write_splits(args.out / "splits", files, labels, split, keep_all)
            row["train top-1 noisy"] = train_top1(args.out / "splits", args.train_size, args.epochs)
            write_splits(args.out / "splits", files, labels, split, ~rejected)
            row["train top-1 audited"] = train_top1(args.out / "splits", args.train_size, args.epochs)
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False), flush=True)
    print()
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    print("seconds per 1,000 images (this CPU, torch threads: %d): " % torch.get_num_threads()
          + ", ".join(f"{step} {value:.1f}" for step, value in cost.items()))


def _ratio(a: int, b: int) -> float:
    return float(a) / float(b) if b else float("nan")


if __name__ == "__main__":
    main()
