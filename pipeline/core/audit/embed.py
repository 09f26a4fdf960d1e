"""One embedding per crop from the pretrained backbone, computed once per crop content.

Why embeddings: label issues and outliers are judged in the feature space of an ImageNet backbone, where a
linear model separates classes far better than on pixels, and distances mean "looks alike".

Why cached by sha256: the audit is re-run whenever a threshold or an action changes; the embeddings only
change when the bytes of a crop do. A cached vector is a plain ``.npy`` file (loaded with
``allow_pickle=False``, so a foreign cache cannot run code), named by the crop's sha256 under a folder
named by the backbone and the input size, so two settings never mix. Writes go through a temp file and a
rename: two runs sharing the cache at worst compute a vector twice, never read half of one.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pipeline.core.base.io import atomic_path

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.core.learn.data import Normalize

#: the backbone whose pooled features are the embeddings (1280 numbers per crop)
ARCH = "mobilenet_v2"


class EmbeddingCache:
    """``<folder>/<arch>-<size>px/<sha[:2]>/<sha>.npy``: float32 vectors, one file per crop content."""

    def __init__(self, folder: Path, size: int) -> None:
        self.root = Path(folder) / f"{ARCH}-{size}px"

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.npy"

    def get(self, sha256: str) -> np.ndarray | None:
        path = self.path(sha256)
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # a damaged file is computed again
            return None

    def put(self, sha256: str, vector: np.ndarray) -> None:
        path = self.path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, vector.astype(np.float32), allow_pickle=False)


class Embedder:
    """The backbone without its classifier: squashed RGB crops in, pooled features out (on the GPU when present).

    Built on first use, and torch imported then: a run whose embeddings are all cached (a re-run with other
    actions or thresholds) never loads torch, ~650 MiB of RSS before any weights, which the findings can use.
    """

    def __init__(self, size: int, device: str = "auto") -> None:
        self.size = size
        self.device_name = device
        self._model: nn.Module | None = None

    def _load(self) -> tuple[nn.Module, torch.device, Normalize]:
        from torch import nn

        from pipeline.core.learn.data import Normalize
        from pipeline.core.learn.device import pick_device, to_device
        from pipeline.core.learn.models import IMAGENET_MEAN, IMAGENET_STD, build_model

        device = pick_device(self.device_name)
        if self._model is None:
            model = build_model(ARCH, 1000, weights="imagenet")
            model.classifier = nn.Identity()
            self._model = to_device(model, device).eval()
        return self._model, device, Normalize(IMAGENET_MEAN, IMAGENET_STD, device)

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        from pipeline.core.learn.device import infer

        model, device, normalize = self._load()
        pixels = np.stack([np.asarray(im.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR))
                           for im in images])
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(device)
        return infer(model, batch, device, normalize).cpu().numpy()


def embed_into_cache(items: list[tuple[str, str]], size: int, cache_dir: str, device: str, batch: int,
                     max_pixels: int) -> int:
    """Embed the files of ``items`` (``(path, sha256)``) in batches and put each vector in the cache; return
    how many. Run in a process of its own (:func:`embed_apart`), so torch never enters the audit's process."""
    from pipeline.core.images.imaging import ImageProblem, load_image

    cache, embedder = EmbeddingCache(Path(cache_dir), size), Embedder(size, device)
    done = 0
    for start in range(0, len(items), batch):
        images, shas = [], []
        for path, sha in items[start:start + batch]:
            try:
                data = Path(path).read_bytes()
                if hashlib.sha256(data).hexdigest() != sha:  # changed since the audit read it: left out
                    continue
                images.append(load_image(data, max_pixels))
                shas.append(sha)
            except (OSError, ImageProblem):  # gone since it was read: the audit leaves it out
                continue
        if images:
            for sha, vector in zip(shas, embedder(images)):
                cache.put(sha, vector)
            done += len(images)
    return done


def embed_apart(items: list[tuple[str, str]], size: int, cache_dir: Path, device: str, batch: int,
                max_pixels: int) -> int:
    """:func:`embed_into_cache` in a fresh child process: torch and the backbone (~700 MiB of RSS) live and
    die there, and the audit's own process, which then holds the embeddings and fits the label-issue model,
    never imports them (at 100k photos its peak fell from 2,234 MiB, BENCHMARKS.md)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from pipeline.core.base.errors import PipelineFailure

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(embed_into_cache, items, size, str(cache_dir), device, batch, max_pixels).result()
        except BrokenProcessPool:
            raise PipelineFailure("the audit's embedding process died (out of memory?); run again to resume "
                                  "from the embeddings cached so far") from None
