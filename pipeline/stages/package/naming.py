"""Package names that follow the labels, the package kinds, and the guards that keep a name's ``latest`` on
one kind and one label set.

Without ``package.name`` the dataset is ``openimages/<labels>``, the label set sorted and lower-cased
(``[Hamburger, Sandwich]`` -> ``openimages/hamburger-sandwich``), so an experiment on other labels never
becomes another dataset's latest; the model trained on it is ``<name>-model`` (so ``[Fashion model]`` is
published as ``openimages/fashion-model_dataset``). A version is never published onto a name whose latest
version is of another kind, or made by something else, nor (unless ``package.allow_other_labels``) onto a
dataset of other labels. The rules: docs/architecture.md ("package"); the grammar:
:mod:`pipeline.core.base.package_names`.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

from pipeline.core.base.errors import UserError
from pipeline.core.base.package_names import MAX_DATASET_PART, MODEL_SUFFIX

OWNER = "openimages"
DATASET = "dataset"
MODEL = "model"
#: what a derived dataset name ending in MODEL_SUFFIX gets (a slug never holds "_", so no label set makes it)
_NOT_A_MODEL = "_dataset"
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def dataset_name(labels: Sequence[str]) -> str:
    """``openimages/<label>-<label>...`` for this label set (too long: cut, plus a hash of the whole set)."""
    slugs = sorted(_NOT_SLUG.sub("-", label.lower()).strip("-") or "label" for label in labels)
    part = "-".join(slugs)
    if len(part) > MAX_DATASET_PART:
        digest = hashlib.sha256("\n".join(slugs).encode()).hexdigest()[:8]
        part = part[: MAX_DATASET_PART - 9].rstrip("-") + "-" + digest
    if part.endswith(MODEL_SUFFIX):  # reserved for models
        part = part[: MAX_DATASET_PART - len(_NOT_A_MODEL)] + _NOT_A_MODEL
    return f"{OWNER}/{part}"


def model_name(dataset: str) -> str:
    """The model package of ``dataset`` (a name :func:`~pipeline.core.base.package_names.check_dataset_name` passed)."""
    return dataset + MODEL_SUFFIX


def kind_of(meta: dict) -> str | None:
    """The kind of package a version's metadata describes; None for a package this pipeline did not make.

    Versions published before the kind was recorded are told apart by their metadata's shape: a model's
    has a ``model`` section, a dataset's a ``dataset`` section with its ``labels``.
    """
    if meta.get("kind") in (DATASET, MODEL):
        return meta["kind"]
    if "kind" in meta:
        return None
    if isinstance(meta.get(MODEL), dict):
        return MODEL
    if isinstance(meta.get(DATASET), dict) and isinstance(meta[DATASET].get("labels"), list):
        return DATASET
    return None


def same_kind(name: str, kind: str) -> Callable[[dict], None]:
    """A check of the latest version's metadata: refuse to publish a ``kind`` package onto another kind."""
    def check(latest: dict) -> None:
        held = kind_of(latest)
        if held == kind:
            return
        what = f"a {held} package" if held else "a package openimages-pipeline did not make"
        raise UserError(f"{name}: its latest version is {what}; a {kind} is never published onto it: choose "
                        "another package.name")

    return check


def same_dataset(name: str, labels: Sequence[str], allowed: bool) -> Callable[[dict], None]:
    """A check of the latest version's metadata: a dataset (:func:`same_kind`), and of these labels unless
    ``allowed``."""
    wanted = sorted(labels)
    kind = same_kind(name, DATASET)

    def check(latest: dict) -> None:
        kind(latest)
        held = (latest.get(DATASET) or {}).get("labels")
        if allowed or not isinstance(held, list) or sorted(map(str, held)) == wanted:
            return
        raise UserError(
            f"{name}: its latest version holds labels [{', '.join(sorted(map(str, held)))}], this run has "
            f"[{', '.join(wanted)}]: leave package.name empty (a name from the labels), choose another, or set "
            "package.allow_other_labels: true to publish it there anyway"
        )

    return check
