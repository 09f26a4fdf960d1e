"""Image quality of a crop from its pixels: blurry, dark, light, low information, odd aspect ratio.

Why not cleanvision: it would decode every file a second time in its own loader (the audit already holds
each crop decoded for its embedding), and its five checks are a few lines of numpy each; owning them keeps
the thresholds plain numbers in params.yaml, with the same meaning on every dataset.

Every statistic is computed on **luminance** only (PIL's ``L``): colour plays no part, so a grey or
black-and-white photo is judged exactly as its colour twin would be, and is never rejected for being grey.
The picture is first reduced to at most :data:`SIDE` pixels a side, so a statistic means the same for a
small crop and a big one.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

#: the longer side statistics are measured at
SIDE = 128


def luminance(image: Image.Image) -> np.ndarray:
    """The crop's luminance in 0..1, reduced to at most :data:`SIDE` pixels a side."""
    grey = image.convert("L")
    grey.thumbnail((SIDE, SIDE), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float32) / 255.0


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian (on 0..255 values): edges make it large, blur and flat areas small."""
    g = grey * 255.0
    if min(g.shape) < 3:
        return 0.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def entropy(grey: np.ndarray) -> float:
    """Shannon entropy of the 256-level histogram in bits (0 = one flat tone, 8 = every tone alike)."""
    counts = np.bincount((grey * 255).round().astype(np.int64).ravel(), minlength=256)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def quality_stats(image: Image.Image) -> dict[str, float]:
    """The statistic behind each quality issue (the ledger's ``score`` when it is the issue):

    - ``blurry``: :func:`sharpness`, low is blurry;
    - ``dark``: the 99th percentile of luminance, low when even the brightest parts are dark;
    - ``light``: the 1st percentile of luminance, high when even the darkest parts are washed out;
    - ``low_information``: :func:`entropy`, low for flat or nearly flat crops;
    - ``odd_aspect``: shorter side / longer side of the crop as it is, low for slivers.
    """
    grey = luminance(image)
    return {
        "blurry": sharpness(grey),
        "dark": float(np.percentile(grey, 99)),
        "light": float(np.percentile(grey, 1)),
        "low_information": entropy(grey),
        "odd_aspect": min(image.size) / max(max(image.size), 1),
    }
