"""The one grammar of package names (``owner/name``), and the rule that keeps datasets and models apart.

A name is typed by users, printed in commands for others to paste, and becomes folders of a local registry
and keys of a bucket, so it is matched whole against a grammar strict enough that every accepted name is a
safe path part and a runnable shell argument (a subset of quilt3's own). The model trained on dataset ``X``
is ``X-model``, so a *dataset* name may not end in ``-model`` and keeps its name part to 58 characters.
The grammar and why each part of it: docs/architecture.md ("package").
"""
from __future__ import annotations

import re

MAX_PART = 64
MODEL_SUFFIX = "-model"
#: a dataset's name part leaves room for MODEL_SUFFIX
MAX_DATASET_PART = MAX_PART - len(MODEL_SUFFIX)
_PART = rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_PART - 1}}}"
_NAME = re.compile(rf"{_PART}/{_PART}", re.ASCII)
GRAMMAR = ("owner/name: each part starts with a letter or digit, then letters, digits, _ and -, "
           f"{MAX_PART} characters at most")


def _shown(name: object) -> str:
    return repr(name[:80] if isinstance(name, str) else name)


def check_package_name(name: object) -> str:
    """``name`` when it follows the grammar, else ``ValueError`` saying the grammar."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"must look like owner/dataset ({GRAMMAR}), got {_shown(name)}")
    return name


def check_dataset_name(name: object) -> str:
    """A package name a dataset may take: the grammar, not ending in ``-model``, room for its model's name."""
    check_package_name(name)
    part = name.split("/")[1]
    if part.endswith(MODEL_SUFFIX):
        raise ValueError(f"must not end in {MODEL_SUFFIX} (reserved for models: the model of dataset owner/X is "
                         f"owner/X{MODEL_SUFFIX}), got {_shown(name)}")
    if len(part) > MAX_DATASET_PART:
        raise ValueError(f"must have at most {MAX_DATASET_PART} characters after the slash (the dataset's model "
                         f"is published as <name>{MODEL_SUFFIX}), got {_shown(name)}")
    return name
