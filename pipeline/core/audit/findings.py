"""Label issues and outliers, from the crops' embeddings.

Label issues are cleanlab's confident learning (Northcutt et al., "Confident Learning", JAIR 2021) on
**out-of-sample** predicted probabilities: a logistic regression on the embeddings, trained K times, each
time predicting the fold it did not see. In-sample probabilities would have memorised the wrong labels;
out-of-sample ones say what the rest of the data thinks each crop is. ``find_label_issues`` then flags the
crops whose given label is off-diagonal in the estimated joint of given and true labels, and
``get_label_quality_scores`` ranks every crop (self-confidence: the probability of its given label).

Outliers are crops far from all others in embedding space: the mean cosine distance to the ``k`` nearest
neighbours, cut where cleanlab's Datalab cuts (above Q3 + ``iqr`` x IQR of those distances), so the cut
adapts to how spread out a dataset is and flags nothing in a tight one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sklearn
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

#: neighbours whose mean distance is a crop's outlier score
NEIGHBOURS = 10
#: most crops the neighbours are looked for among (see :func:`outlier_scores`)
REFERENCE = 20_000
#: MiB of distances computed at once (sklearn's default is 1,024)
WORKING_MIB = 128
#: columns of the embeddings standardised at once (see :class:`ColumnScaler`)
COLUMNS = 128
#: inverse L2 strength of the logistic regression: strong, so 1,280 features do not memorise wrong labels
#: (on the digits at 10 % noise: precision 0.86 at C=0.01 against 0.75 at C=0.1, same recall; BENCHMARKS.md)
C = 0.01


def classifier() -> LogisticRegression:
    """An L2-regularised logistic regression (multinomial, lbfgs), for standardised embeddings."""
    return LogisticRegression(C=C, max_iter=300)


def linear_model() -> object:
    """Standardised embeddings into :func:`classifier`."""
    return make_pipeline(StandardScaler(), classifier())


@dataclass(frozen=True)
class LabelIssues:
    """Per crop: the probability of each class (out of sample), its label quality, flag and likely label."""

    pred_probs: np.ndarray   # (n, classes)
    quality: np.ndarray      # (n,) 0..1, low = suspicious
    flagged: np.ndarray      # (n,) bool
    suggested: np.ndarray    # (n,) class index the model prefers


def out_of_sample_probs(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray | None:
    """Predicted probabilities of each crop from a model that never saw it; None when a class is too small.

    Fewer folds than asked when the smallest class has fewer crops (each fold needs one of each); under two
    crops in a class there is nothing to cross-validate. What sklearn's ``cross_val_predict`` with
    :func:`linear_model` computes, to the bit, with a third of the memory beside the embeddings: each fold's
    training rows are copied once and standardised in place, :data:`COLUMNS` columns at a time
    (:class:`ColumnScaler`). The pipeline held that copy, a float64 copy while fitting the scaler and the
    standardised copy: 2.4x the embeddings, +1,518 MiB at 112k crops against +514 now (BENCHMARKS.md).
    """
    counts = np.bincount(labels)
    k = int(min(folds, counts.min()))
    if len(counts) < 2 or k < 2:
        return None
    probs: np.ndarray | None = None
    for train, held_out in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(features, labels):
        rows = features[train]
        scaler = ColumnScaler(rows)
        model = classifier().fit(scaler.standardise(rows), labels[train])
        del rows  # the training copy goes before the held-out one is made
        predicted = model.predict_proba(scaler.standardise(features[held_out]))
        if probs is None:  # the model's dtype (float32 embeddings give float32 probabilities, as sklearn's)
            probs = np.empty((len(labels), predicted.shape[1]), predicted.dtype)
        probs[held_out] = predicted
    return probs


class ColumnScaler:
    """sklearn's ``StandardScaler`` fitted and applied :data:`COLUMNS` columns at a time, in place.

    Each column's mean and variance are sklearn's own, bit for bit (a column's statistics never depend on the
    others); fitting all columns at once would hold a float64 copy of every row (twice the float32 rows).
    """

    def __init__(self, rows: np.ndarray) -> None:
        starts = range(0, rows.shape[1], COLUMNS)
        self.blocks = [(columns, StandardScaler().fit(rows[:, columns]))
                       for columns in (slice(start, start + COLUMNS) for start in starts)]

    def standardise(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` (a copy of ours) standardised in place; returned for chaining."""
        for columns, scaler in self.blocks:
            rows[:, columns] = scaler.transform(rows[:, columns])
        return rows


def label_issues(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> LabelIssues | None:
    """Confident learning on :func:`out_of_sample_probs`; None when there is too little to judge."""
    probs = out_of_sample_probs(features, labels, folds, seed)
    if probs is None:
        return None
    flagged = find_label_issues(labels, probs, filter_by="prune_by_noise_rate")
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    return LabelIssues(probs, quality, np.asarray(flagged, dtype=bool), probs.argmax(axis=1))


def naive_label_issues(features: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """The baseline confident learning is measured against: the ``count`` crops whose given label gets the
    lowest probability from one model trained on all of them (noisy labels included), as a bool mask."""
    model = linear_model().fit(features, labels)
    given = model.predict_proba(features)[np.arange(len(labels)), labels]
    mask = np.zeros(len(labels), dtype=bool)
    mask[np.argsort(given, kind="stable")[:count]] = True
    return mask


def outlier_scores(features: np.ndarray, iqr: float, reference: int = REFERENCE) -> tuple[np.ndarray, float]:
    """Each crop's mean cosine distance to its nearest neighbours, and the distance above which it is an
    outlier (Q3 + ``iqr`` x IQR); with fewer than three crops there are no neighbours to compare: no cut.

    Neighbours are looked for among at most ``reference`` crops (every crop up to that many; beyond, an
    evenly spaced sample of them, the same on every run): comparing every crop with every other one is
    quadratic, 100,000 crops of 1,280 numbers a hundred times the CPU of 10,000 (BENCHMARKS.md, "Cost as
    the work grows"), while "far from all others" is as well judged against 20,000 of them. The distance
    matrix is computed in row blocks of bounded memory (``working_memory``) rather than sklearn's 1 GiB.
    """
    n = len(features)
    if n < 3:
        return np.zeros(n), float("inf")
    sample = np.linspace(0, n - 1, min(n, reference)).round().astype(np.int64)
    k = min(NEIGHBOURS, len(sample) - 1)
    with sklearn.config_context(working_memory=WORKING_MIB):
        index = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(features[sample])
        distances, neighbours = index.kneighbors(features)
    in_sample = np.zeros(n, dtype=bool)
    in_sample[sample] = True
    # a crop of the sample finds itself first; any other crop keeps its k nearest
    mean = np.where(in_sample, distances[:, 1:].mean(axis=1), distances[:, :k].mean(axis=1))
    q1, q3 = np.percentile(mean, [25, 75])
    return mean, float(q3 + iqr * (q3 - q1))
