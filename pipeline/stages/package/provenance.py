"""What a package records about how it was made: the params that shaped it and the code that ran.

Both must be the same on every machine for the same inputs, since quilt3's top hash covers the package
metadata. So: the tracked params only (never ``runtime``: processes, device, caches; never ``package``:
where it goes is not what it is), URLs without credentials, and the code as the package version plus a
hash of the source of the stages that made it, not a git commit (which changes with any edit to a README,
and is "unknown" outside a checkout).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pipeline
from pipeline.core.base.params import Params
from pipeline.core.base.redact import public_url

PIPELINE_DIR = Path(pipeline.__file__).resolve().parent
#: the stages whose code made the dataset's files (package writes its README and ATTRIBUTION.csv)
DATASET_STAGES = ("metadata", "select", "download", "crop", "clean", "audit", "split", "shards", "package")
MODEL_STAGES = ("train", "evaluate", "package")
DATASET_PARAMS = ("labels", "source", "select", "crop", "clean", "audit", "split", "shards")
MODEL_PARAMS = ("train", "evaluate")


def recorded_params(params: Params, sections: Sequence[str]) -> dict:
    """``sections`` of params as plain values, with any password or token in a URL blanked."""
    plain = params.to_dict()
    recorded = {section: plain[section] for section in sections}
    if "source" in recorded:
        recorded["source"] = {key: public_url(value) if key.endswith("_url") else value
                              for key, value in recorded["source"].items()}
    return recorded


def code_files(stages: Sequence[str], root: Path = PIPELINE_DIR) -> list[Path]:
    """The Python source of ``pipeline/core`` and of ``stages`` (each a module or a package), sorted."""
    found = set((root / "core").rglob("*.py"))
    for stage in stages:
        module, package = root / "stages" / f"{stage}.py", root / "stages" / stage
        found |= {module} if module.is_file() else set(package.rglob("*.py"))
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def code_version(stages: Sequence[str], root: Path = PIPELINE_DIR) -> dict:
    """``{"package": "openimages-pipeline", "version", "sha256"}``: the hash covers each file's path
    (relative to ``pipeline/``) and content, line endings normalised (a Windows checkout hashes the same)."""
    digest = hashlib.sha256()
    for path in code_files(stages, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return {"package": "openimages-pipeline", "version": pipeline.__version__, "sha256": digest.hexdigest()}
