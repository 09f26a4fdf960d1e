"""The model package ``<name>-model``: the trained model, its metrics and curves, and the dataset it came from.

Logical keys: ``model.pt`` (a plain dict of tensors, loaded with ``weights_only=True``), ``metrics/train.json``,
``metrics/eval.json``, ``plots/confusion.csv``, ``dvclive/metrics.json`` and ``dvclive/plots/metrics/*.tsv``
(the per-epoch curves), and ``README.md``. The metadata names the dataset package (name and top hash) the
model was trained and evaluated on. A model trained on a GPU differs from one trained on a CPU, so it is its
own package: the dataset's top hash stays the same on every machine, and the model records which one it is.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.core.base import paths
from pipeline.core.base.errors import UserError
from pipeline.core.base.params import Params
from pipeline.stages.package.dataset import read_json_object
from pipeline.stages.package.naming import MODEL
from pipeline.stages.package.provenance import MODEL_PARAMS, MODEL_STAGES, code_version, recorded_params

DVCLIVE_DIR = Path("dvclive")
#: logical key -> file, for the single files (the dvclive curves are added by folder)
SINGLE_FILES = {
    "model.pt": paths.MODEL,
    "metrics/train.json": paths.METRICS_DIR / "train.json",
    "metrics/eval.json": paths.METRICS_DIR / "eval.json",
    "plots/confusion.csv": paths.PLOTS_DIR / "confusion.csv",
    "dvclive/metrics.json": DVCLIVE_DIR / "metrics.json",
}


def input_files() -> dict[str, Path]:
    """The model's files that exist, by logical key (``model.pt`` always: see :func:`has_model`)."""
    files = {key: path for key, path in SINGLE_FILES.items() if path.is_file()}
    curves = DVCLIVE_DIR / "plots"
    files.update({path.as_posix(): path for path in sorted(curves.rglob("*.tsv")) if path.is_file()})
    return dict(sorted(files.items()))


def has_model() -> bool:
    return paths.MODEL.is_file()


def scalar_metrics(files: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Top-level numbers of each ``metrics/*.json`` file (for the metadata and the README's table)."""
    found = {}
    for key in ("metrics/train.json", "metrics/eval.json"):
        if key in files:
            values = read_json_object(files[key])
            found[key] = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return found


def check_trained_on(files: dict[str, Path], labels: list[str]) -> None:
    """Refuse a model from another run (the package would name a dataset it was not trained on): its
    evaluation must be of exactly the dataset's labels. ``dvc repro`` keeps them in step; a stage run by hand
    after other labels' split does not."""
    if "metrics/eval.json" not in files:
        return
    per_class = read_json_object(files["metrics/eval.json"]).get("per_class")
    if isinstance(per_class, dict) and sorted(map(str, per_class)) != sorted(labels):
        raise UserError(f"{files['metrics/eval.json']} is for labels [{', '.join(sorted(map(str, per_class)))}], "
                        f"the dataset has [{', '.join(sorted(labels))}]: the model is from another run; run dvc repro")


def metadata(params: Params, dataset_name: str, dataset_top_hash: str, labels: list[str],
             metrics: dict[str, dict[str, float]]) -> dict:
    """The model package's metadata: what it is, what it was trained on, and how well it did."""
    return {
        "kind": MODEL,
        "model": {"file": "model.pt", "arch": params.train.arch, "labels": labels, "img_size": params.train.img_size},
        "dataset": {"name": dataset_name, "top_hash": dataset_top_hash},
        "metrics": metrics.get("metrics/eval.json", {}),
        "params": recorded_params(params, MODEL_PARAMS),
        "code": code_version(MODEL_STAGES),
    }
