"""Real labelled images as a class-folder dataset, with some labels flipped (shared by the audit's tests and
``bench/audit_bench.py``): scikit-learn's ``load_digits``, 1,797 handwritten digits (8x8, 17 grey levels)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def digit_images(size: int = 32) -> tuple[list[Image.Image], np.ndarray]:
    """Every digit upscaled to ``size`` px, RGB, and its true class (0..9)."""
    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    images = [Image.fromarray(p).resize((size, size), Image.Resampling.BILINEAR).convert("RGB") for p in pixels]
    return images, digits.target.astype(np.int64)


def flip_labels(truth: np.ndarray, fraction: float, seed: int, classes: int = 10) -> np.ndarray:
    """``truth`` with ``fraction`` of its entries (drawn with ``seed``) changed to another class at random."""
    rng = np.random.default_rng(seed)
    noisy = truth.copy()
    chosen = rng.choice(len(truth), size=int(round(fraction * len(truth))), replace=False)
    noisy[chosen] = (truth[chosen] + rng.integers(1, classes, size=len(chosen))) % classes
    return noisy


def write_class_folders(root: Path, images: list[Image.Image], labels: np.ndarray,
                        names: list[str] | None = None) -> list[Path]:
    """``root/<label>/<index>.png`` for every image (``names`` picks the file names); returns the paths."""
    paths = []
    for index, (image, label) in enumerate(zip(images, labels)):
        path = root / f"digit_{label}" / f"{names[index] if names else f'{index:05d}'}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        paths.append(path)
    return paths
