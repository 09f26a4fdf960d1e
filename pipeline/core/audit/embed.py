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
