"""Package names that follow the labels, and the guard that keeps a name's ``latest`` on one label set.

Without ``package.name`` the dataset is ``openimages/<labels>``: the label set, sorted and lower-cased
(``[Hamburger, Sandwich]`` -> ``openimages/hamburger-sandwich``), so ``dvc exp run -S 'labels=[Pizza,"Hot
dog"]'`` publishes ``openimages/hot-dog-pizza`` and never becomes another dataset's latest. The model
trained on it is ``<name>-model``. When a name's latest version holds other labels (a ``package.name``
set by hand, kept while the labels changed), publishing stops, unless ``package.allow_other_labels``.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

from pipeline.core.errors import UserError

OWNER = "openimages"
MODEL_SUFFIX = "-model"
#: quilt3 allows 64 characters after the slash (pipeline.core.safe); the model's suffix must still fit
MAX_DATASET_PART = 64 - len(MODEL_SUFFIX)
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def dataset_name(labels: Sequence[str]) -> str:
    """``openimages/<label>-<label>...`` for this label set (too long: cut, plus a hash of the whole set)."""
    slugs = sorted(_NOT_SLUG.sub("-", label.lower()).strip("-") or "label" for label in labels)
    part = "-".join(slugs)
    if len(part) > MAX_DATASET_PART:
        digest = hashlib.sha256("\n".join(slugs).encode()).hexdigest()[:8]
        part = part[: MAX_DATASET_PART - 9].rstrip("-") + "-" + digest
    return f"{OWNER}/{part}"


def model_name(dataset: str) -> str:
    """The model package of ``dataset``."""
    if len(dataset.split("/", 1)[1]) > MAX_DATASET_PART:
        raise UserError(f"params.yaml: package.name {dataset!r}: at most {MAX_DATASET_PART} characters after the "
                        f"slash (the model is published as <name>{MODEL_SUFFIX})")
    return dataset + MODEL_SUFFIX


def same_labels(name: str, labels: Sequence[str], allowed: bool) -> Callable[[dict], None]:
    """A check of the latest version's metadata: refuse other labels under ``name`` unless ``allowed``."""
    wanted = sorted(labels)

    def check(latest: dict) -> None:
        held = (latest.get("dataset") or {}).get("labels")
        if allowed or not isinstance(held, list) or sorted(map(str, held)) == wanted:
            return
        raise UserError(
            f"{name}: its latest version holds labels [{', '.join(sorted(map(str, held)))}], this run has "
            f"[{', '.join(wanted)}]: leave package.name empty (a name from the labels), choose another, or set "
            "package.allow_other_labels: true to publish it there anyway"
        )

    return check
