"""The audit on real labelled images with known wrong labels: does it find them, and does rejecting them help?

Data: scikit-learn's ``load_digits`` (1,797 real handwritten digits, 8x8, 17 grey levels), upscaled to
``--size`` px RGB and written as class folders (``digit_<n>/``); a seeded 70/15/15 split into train, val and
test; then 0, 5, 10 and 20 % of the **train and val** labels flipped to another digit at random (seeded).
The test labels stay true: they are the yardstick.

Per noise level, in one run:

- ``audit``: :func:`pipeline.core.audit.ledger.audit` on the train+val images with the params' defaults
  (``label_issue`` set to ``reject``, the candidate default): precision and recall of the crops it flags as
  label issues against the flipped ones;
- ``naive``: the K lowest given-label probabilities of one logistic regression trained on all the noisy
  labels (K = the number the audit flags), the same embeddings: what confident learning must beat;
- ``lr top-1``: a logistic regression on the embeddings, trained on the noisy train split and on the train
  split without the audit's rejects, scored on the true test labels;
- ``train top-1`` (``--train``): the train stage's own code path with the shipped ``params.yaml`` recipe
  (``bench/recipe_bench.py``'s ``run_stage``, ``img_size`` ``--train-size``) on the noisy splits, and on the
  same splits without the audit's rejects (the defaults applied); top-1 of the best epoch on the true test labels.

``--seeds``: per seed, other flipped labels (seed 0 keeps the draws of the first runs) and another
training seed. ``--cost``: seconds per 1,000 images of each step (read + quality checks, embeddings with no
cache, label issues + outliers), wall and CPU seconds of this process (CPU seconds hardly depend on what
else the machine runs; with ``--threads 1`` they are the work itself).

Usage::

    nice -n 10 python bench/audit_bench.py --seeds 0 --train --threads 1 --reuse-embeddings
    nice -n 10 python bench/audit_bench.py --cost --threads 1 --noise 0.1
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent / "tests"), str(BENCH), str(BENCH.parent)]
from auditkit import digit_images, flip_labels  # noqa: E402
from recipe_bench import run_stage  # noqa: E402

from pipeline.core.audit import findings  # noqa: E402
from pipeline.core.audit.embed import Embedder  # noqa: E402
from pipeline.core.audit.ledger import BATCH, MAX_PIXELS, audit, measure  # noqa: E402
from pipeline.core.audit.quality import quality_stats  # noqa: E402
from pipeline.core.base.params import AuditParams  # noqa: E402
from pipeline.core.images.imaging import load_image  # noqa: E402

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


def write_splits(root: Path, files: list[Path], labels: np.ndarray, split: np.ndarray, keep: np.ndarray) -> Path:
    """``root/{train,val,test}/digit_<label>/`` hard links of the kept images."""
    shutil.rmtree(root, ignore_errors=True)
    for i in np.flatnonzero(keep):
        target = root / split[i] / f"digit_{labels[i]}" / files[i].name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.hardlink_to(files[i])
    return root


def lr_top1(features: np.ndarray, labels: np.ndarray, fit: np.ndarray, test: np.ndarray, truth: np.ndarray) -> float:
    model = findings.linear_model().fit(features[fit], labels[fit])
    return float((model.predict(features[test]) == truth[test]).mean())


def noise_seed(noise: float, seed: int) -> int:
    """The flip draw of a noise level and bench seed (seed 0: the draws of the first published runs)."""
    return int(noise * 100) + 1000 * seed


def one_setting(noise: float, seed: int, args: argparse.Namespace, files: list[Path], truth: np.ndarray,
                split: np.ndarray, vectors: np.ndarray, params: AuditParams, cache: Path) -> dict:
    """Audit, naive baseline and (with ``--train``) the train stage on one noise level and seed."""
    audited = split != "test"
    labels = truth.copy()
    labels[audited] = flip_labels(truth[audited], noise, seed=noise_seed(noise, seed))
    table = pd.DataFrame({"Label": [f"digit_{label}" for label in labels[audited]]})
    start = time.perf_counter()
    ledger, summary = audit(table, [files[i] for i in np.flatnonzero(audited)], params, cache)
    assert summary["embeddings_computed"] == 0 and len(ledger) == audited.sum()
    found = (ledger["suggested_label"] != "").to_numpy()  # cleanlab's flag, whatever else a crop has
    truly = (labels != truth)[audited]
    k = int(found.sum())
    naive = findings.naive_label_issues(vectors[audited], labels[audited], k)
    rejected = np.zeros(len(truth), dtype=bool)
    rejected[np.flatnonzero(audited)] = (ledger["decision"] == "rejected").to_numpy()
    fit, test = split == "train", split == "test"
    row = {
        "seed": seed, "noise": f"{noise:.0%}", "flipped": int(truly.sum()), "flagged": k,
        "precision": _ratio((found & truly).sum(), k), "recall": _ratio((found & truly).sum(), truly.sum()),
        "naive precision": _ratio((naive & truly).sum(), k),
        "naive recall": _ratio((naive & truly).sum(), truly.sum()),
        "rejected": int(rejected.sum()), "rejected flipped": int((rejected & (labels != truth)).sum()),
        "lr top-1 noisy": lr_top1(vectors, labels, fit, test, truth),
        "lr top-1 audited": lr_top1(vectors, labels, fit & ~rejected, test, truth),
        "audit s": round(time.perf_counter() - start, 1),
    }
    if args.train:
        root = args.out / f"splits-seed{seed}-noise{noise:g}"
        for name, keep in (("noisy", np.ones(len(truth), dtype=bool)), ("audited", ~rejected)):
            top1, _, cpu, _ = run_stage(write_splits(root, files, labels, split, keep), args.train_size, seed, {})
            row[f"train top-1 {name}"], row[f"train cpu-s {name}"] = top1, round(cpu, 1)
        row["gain (points)"] = round(100 * (row["train top-1 audited"] - row["train top-1 noisy"]), 1)
        shutil.rmtree(root, ignore_errors=True)
    return row


def cost(files: list[Path], vectors: np.ndarray, labels: np.ndarray, params: AuditParams) -> pd.DataFrame:
    """Wall and CPU seconds per 1,000 images of each of the audit's steps, measured one after the other."""
    rows = []

    def timed(step: str, n: int, work) -> None:
        wall, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        work()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append({"step": step, "images": n, "wall s": wall, "CPU s": cpu, "wall s / 1,000": 1000 * wall / n,
                     "CPU s / 1,000": 1000 * cpu / n, "load before": load, "load after": os.getloadavg()[0]})

    images = []
    timed("read + decode", len(files), lambda: images.extend(load_image(f.read_bytes(), MAX_PIXELS) for f in files))
    timed("quality checks", len(images), lambda: [quality_stats(im) for im in images])
    embedder = Embedder(params.img_size, "cpu")
    embedder(images[:2])  # the model's build and first call (weights read once per run) are not per image
    timed(f"embeddings ({params.img_size} px, no cache)", len(images),
          lambda: [embedder(images[i: i + BATCH]) for i in range(0, len(images), BATCH)])
    timed(f"label issues ({params.folds}-fold LR + cleanlab)", len(labels),
          lambda: findings.label_issues(vectors, labels, params.folds, params.seed))
    timed("outliers (10 nearest, cosine)", len(vectors), lambda: findings.outlier_scores(vectors, params.outlier_iqr))
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32, help="digits upscaled to this many px")
    parser.add_argument("--train", action="store_true", help="also run the train stage per setting (noisy, audited)")
    parser.add_argument("--train-size", type=int, default=32, help="the train stage's img_size (digits are 8 px)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="flip draws and training seeds")
    parser.add_argument("--noise", type=float, nargs="+", default=list(NOISE), help="fractions of labels flipped")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--cost", action="store_true", help="only the seconds per 1,000 images of each step")
    parser.add_argument("--out", type=Path, default=Path("bench/out/audit"))
    parser.add_argument("--reuse-embeddings", action="store_true",
                        help="keep the embedding cache of an earlier run (its embedding cost is then not measured)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, truth = digit_images(args.size)
    files = write_images(args.out / "images", images)
    split = split_of(len(truth))
    params = AuditParams(label_issue="reject")
    cache = args.out / "embeddings"
    if not args.reuse_embeddings:
        shutil.rmtree(cache, ignore_errors=True)
    measured = measure(files, params.img_size, cache)  # every embedding, once (then read from the cache)
    print(f"torch threads {torch.get_num_threads()}; embeddings computed {measured.computed} of {len(files)}; "
          f"audit params {params.model_dump()}", flush=True)
    if args.cost:
        audited = split != "test"
        labels = flip_labels(truth[audited], args.noise[0], seed=noise_seed(args.noise[0], args.seeds[0]))
        print(cost(files, measured.features[audited], labels, params).to_string(index=False, float_format="{:.2f}".format))
        return
    rows = []
    for seed in args.seeds:
        for noise in args.noise:
            rows.append(one_setting(noise, seed, args, files, truth, split, measured.features, params, cache))
            print("ROW " + pd.DataFrame([rows[-1]]).to_string(index=False).replace("\n", "\nROW "), flush=True)
    print()
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _ratio(a: int, b: int) -> float:
    return float(a) / float(b) if b else float("nan")


if __name__ == "__main__":
    main()
