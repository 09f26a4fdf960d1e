"""The ledger: one row per audited crop, with the decision the audit's findings and actions lead to.

``decision`` is ``kept``, ``flagged`` (kept, shown in the report) or ``rejected`` (left out of the splits);
``issue`` the strictest action's first issue in :data:`ISSUES` order ('' when kept), with its statistic
(``score``) and cut (``threshold``); ``suggested_label`` and ``label_quality`` come from cleanlab. What each
column means: docs/architecture.md ("audit").

The ledger depends only on the crops' bytes, their labels and the params: never on timings or the machine.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.audit import findings
from pipeline.core.audit.embed import EmbeddingCache, embed_apart
from pipeline.core.audit.quality import quality_stats
from pipeline.core.base.params import AuditParams
from pipeline.core.images.imaging import ImageProblem, load_image

#: in the order that names a crop's issue when several apply with the same action: what is wrong with the
#: picture itself first (a dark or flat crop also looks mislabelled, because nothing in it can be recognised)
ISSUES = ("dark", "light", "low_information", "blurry", "odd_aspect", "label_issue", "outlier")
QUALITY = ("blurry", "dark", "light", "low_information", "odd_aspect")
#: quality statistics where a HIGH value is the issue (the others: a low one)
HIGH_IS_BAD = frozenset({"light"})
DECISIONS = ("kept", "flagged", "rejected")
ACTION_RANK = {"off": 0, "flag": 1, "reject": 2}
LEDGER_COLUMNS = ["decision", "issue", "score", "threshold", "suggested_label", "label_quality", "sha256"]
#: crops embedded per forward pass
BATCH = 64
#: largest picture (pixels) the audit decodes: a guard against decompression bombs in a foreign folder
MAX_PIXELS = 100_000_000


@dataclass
class Measured:
    """What the audit measured of each readable crop, in input order (``readable`` indexes the input)."""

    readable: np.ndarray
    sha256: list[str]
    features: np.ndarray
    quality: pd.DataFrame
    computed: int = 0                                    # embeddings computed (the rest came from the cache)
    seconds: dict[str, float] = field(default_factory=dict)


def measure(files: list[Path], size: int, cache_dir: Path, device: str = "auto") -> Measured:
    """Read each file once: its sha256, quality statistics and embedding (from the cache when there).

    A file that cannot be read or decoded is left out (``readable`` says which were kept). Embeddings not in
    the cache are computed in a child process that puts them there (:func:`embed_apart`), then read back. They
    go into one float32 matrix of a row per file: no vector per crop kept besides it, no stacked copy.
    """
    cache, features = EmbeddingCache(cache_dir, size), _Matrix(len(files))
    readable, shas, stats = [], [], []
    waiting: dict[str, list[int]] = {}  # sha256 -> the rows that wait for its embedding
    where: dict[str, str] = {}
    seconds = {"read": 0.0, "quality": 0.0, "embeddings": 0.0}
    for index, path in enumerate(files):
        start = time.perf_counter()
        try:
            data = Path(path).read_bytes()
            image = load_image(data, MAX_PIXELS)
        except (OSError, ImageProblem):
            continue
        sha = hashlib.sha256(data).hexdigest()
        seconds["read"] += time.perf_counter() - start
        start = time.perf_counter()
        stats.append(quality_stats(image))
        seconds["quality"] += time.perf_counter() - start
        row = len(readable)
        readable.append(index)
        shas.append(sha)
        cached = None if sha in waiting else cache.get(sha)
        if cached is not None:
            features.put(row, cached)
        else:
            waiting.setdefault(sha, []).append(row)
            where.setdefault(sha, str(path))
    start = time.perf_counter()
    computed = embed_apart([(where[sha], sha) for sha in waiting], size, cache_dir, device, BATCH,
                           MAX_PIXELS) if waiting else 0
    seconds["embeddings"] = time.perf_counter() - start
    for sha, rows in waiting.items():
        vector = cache.get(sha)
        for row in rows if vector is not None else []:
            features.put(row, vector)
    keep = features.filled(len(readable))  # a file that changed while the child read it has none: left out
    return Measured(np.asarray(readable, dtype=np.int64)[keep], [shas[i] for i in keep], features.rows(keep),
                    pd.DataFrame(stats, columns=list(QUALITY)).iloc[keep].reset_index(drop=True), computed,
                    seconds)


class _Matrix:
    """A float32 matrix of ``capacity`` rows, allocated when the first vector shows its length."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.data, self.set = capacity, np.zeros((0, 0), np.float32), np.zeros(capacity, bool)

    def put(self, row: int, vector: np.ndarray) -> None:
        if not self.data.size:
            self.data = np.empty((self.capacity, len(vector)), np.float32)
        self.data[row] = vector
        self.set[row] = True

    def filled(self, count: int) -> np.ndarray:
        return np.flatnonzero(self.set[:count])

    def rows(self, keep: np.ndarray) -> np.ndarray:
        """The rows in ``keep``: a view when they are the first ones in order (the usual case), else a copy."""
        if len(keep) == 0:
            return np.zeros((0, self.data.shape[1] if self.data.size else 0), np.float32)
        return self.data[:len(keep)] if keep[-1] == len(keep) - 1 else self.data[keep]


def findings_of(labels: np.ndarray, measured: Measured, params: AuditParams) -> dict[str, tuple[np.ndarray, ...]]:
    """Per issue: ``(detected, score, threshold)`` arrays over the crops; label issues also their suggestion."""
    n = len(labels)
    found: dict[str, tuple[np.ndarray, ...]] = {}
    issues = findings.label_issues(measured.features, labels, params.folds, params.seed)
    if issues is None:
        found["label_issue"] = (np.zeros(n, bool), np.full(n, np.nan), np.full(n, np.nan), np.full(n, -1))
    else:
        found["label_issue"] = (issues.flagged, issues.quality, np.full(n, np.nan), issues.suggested)
    distance, cut = findings.outlier_scores(measured.features, params.outlier_iqr)
    found["outlier"] = (distance > cut, distance, np.full(n, cut))
    for kind in QUALITY:
        score = measured.quality[kind].to_numpy(dtype=float)
        threshold = float(getattr(params, f"{kind}_threshold"))
        detected = score > threshold if kind in HIGH_IS_BAD else score < threshold
        found[kind] = (detected, score, np.full(n, threshold))
    return found


def decide(labels: np.ndarray, classes: list[str], measured: Measured, params: AuditParams) -> pd.DataFrame:
    """The :data:`LEDGER_COLUMNS` for each measured crop (``labels``: class indices into ``classes``)."""
    if not len(labels):
        return pd.DataFrame({column: [] for column in LEDGER_COLUMNS})
    found = findings_of(labels, measured, params)
    ranks = np.stack([np.where(found[k][0], ACTION_RANK[getattr(params, k)], 0) for k in ISSUES], axis=1)
    strictest = ranks.max(axis=1)
    first = np.argmax(ranks == strictest[:, None], axis=1)  # the first issue (in ISSUES order) that decided
    rows = np.arange(len(labels))
    score = np.stack([found[k][1] for k in ISSUES], axis=1)[rows, first]
    threshold = np.stack([found[k][2] for k in ISSUES], axis=1)[rows, first]
    detected, quality, _, suggested = found["label_issue"]
    show = detected & (params.label_issue != "off")
    names = np.array(classes, dtype=object)
    return pd.DataFrame({
        "decision": np.array(DECISIONS, dtype=object)[strictest],
        "issue": np.where(strictest > 0, np.array(ISSUES, dtype=object)[first], ""),
        "score": np.where(strictest > 0, score, np.nan),
        "threshold": np.where(strictest > 0, threshold, np.nan),
        "suggested_label": np.where(show, names[np.clip(suggested, 0, None).astype(int)], ""),
        "label_quality": quality.astype(float),
        "sha256": measured.sha256,
    })


def audit(table: pd.DataFrame, files: list[Path], params: AuditParams, cache_dir: Path,
          device: str = "auto") -> tuple[pd.DataFrame, dict]:
    """``table`` (one row per file, with a ``Label`` column) joined with its :data:`LEDGER_COLUMNS`, rows of
    unreadable files left out; and a summary (counts, what was computed, seconds per step)."""
    measured = measure(files, params.img_size, cache_dir, device)
    rows = table.iloc[measured.readable].reset_index(drop=True)
    classes = sorted(rows["Label"].astype(str).unique())
    labels = rows["Label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    start = time.perf_counter()
    decided = decide(labels, classes, measured, params)
    seconds = {**measured.seconds, "issues": time.perf_counter() - start}
    ledger = pd.concat([rows, decided], axis=1)
    summary = {
        "crops": len(ledger),
        "unreadable": len(files) - len(ledger),
        "embeddings_computed": measured.computed,
        "decisions": {d: int((ledger["decision"] == d).sum()) for d in DECISIONS},
        "issues": {k: int((ledger["issue"] == k).sum()) for k in ISSUES},
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    return ledger, summary
