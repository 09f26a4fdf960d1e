"""The package stage: publish the dataset, and the model trained on it, as quilt3 packages.

Two packages, so that a dataset version is a function of its inputs alone: ``<name>`` (:mod:`.dataset`: the
crops as the shards stage's tars, no entry per crop, the split tables, manifests, README and ATTRIBUTION.csv,
with the params, source, counts, licences and code version in its metadata; the same inputs give the same
top hash on any machine) and ``<name>-model`` (:mod:`.model`: model.pt, metrics and curves, naming the
dataset's top hash). ``<name>`` is ``package.name`` or follows the labels (:mod:`.naming`); both go to
``package.registry`` (``s3://bucket``), or when it is empty to the local registry ``data/quilt-registry``.
Content identical to a package's latest version adds no version. What each holds, and why a failed push
leaves nothing half registered: docs/architecture.md ("package") and :mod:`pipeline.core.publish.registry`.
"""
from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass

from pipeline.core.base import manifests, paths
from pipeline.core.base.errors import UserError
from pipeline.core.base.io import atomic_path
from pipeline.core.base.package_names import check_dataset_name
from pipeline.core.base.params import Params
from pipeline.core.base.stages import Summary
from pipeline.core.base.staging import staging_path, sweep
from pipeline.core.publish.registry import Published, Registry, publish
from pipeline.stages.package import dataset, model
from pipeline.stages.package.naming import MODEL, dataset_name, model_name, same_dataset, same_kind
from pipeline.stages.package.readme import dataset_readme, model_readme

STAGING = "package-staging"


def write_package_info(registry: Registry, name: str, data: Published, model_info: dict | None) -> None:
    """``data/package.json``, written atomically (DVC's output for this stage; commit it with dvc.lock)."""
    info = {"name": name, "registry": registry.shown, "top_hash": data.top_hash}
    if model_info:
        info["model"] = model_info
    with atomic_path(paths.PACKAGE_INFO) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")


def published_line(name: str, registry: Registry, published: Published, what: str) -> str:
    """One line on what ``publish`` did: the version's hash, where, and whether it is new."""
    news = "new version" if published.added else "unchanged: already the latest version, no version added"
    return f"{what} {name}@{published.top_hash[:12]} in {registry.shown} ({news})"


@dataclass(frozen=True)
class PackageSummary(Summary):
    """What was published: the dataset's name and top hash, where, and the model's (None: no model)."""

    name: str
    registry: str
    top_hash: str
    model_name: str | None
    images: int
    files: int

    def lines(self) -> list[str]:
        model_too = f" (and {self.model_name} the same way)" if self.model_name else ""
        return [f"{self.images} images in {self.files} files; pull them: python -m pipeline.pull {self.name} "
                f"--registry {shlex.quote(self.registry)} --hash {self.top_hash[:12]} --dest DIR{model_too}"]


def run(params: Params) -> PackageSummary:
    """The stage: publish the dataset, then the model that names its top hash; write ``data/package.json``.
    (Under the stage's lock: two runs at once would race for the same registry's "latest".)"""
    labels = dataset.read_labels()
    display = sorted(labels.values())
    name = params.package.name or dataset_name(display)
    try:
        check_dataset_name(name)  # package.name passed it when params were read; a derived name must too
    except ValueError as exc:
        raise UserError(f"dataset name {exc}") from None
    model_package = model_name(name)
    registry = Registry.parse(params.package.registry or str(paths.QUILT_REGISTRY), "params.yaml: package.registry")

    index = dataset.read_shards()
    files = dataset.input_files(index)
    splits_table = manifests.SPLITS.require(manifests.SPLITS.read(), ["ImageID"])
    counts = dataset.count_images(splits_table, labels)
    dataset.check_shards(index, counts)
    credits = dataset.attribution(manifests.SELECTED.read(), splits_table["ImageID"].tolist())
    meta = dataset.metadata(params, counts, credits)
    model_files = model.input_files() if model.has_model() else {}
    model.check_trained_on(model_files, display)

    paths.DATA.mkdir(exist_ok=True)
    sweep(paths.DATA, STAGING)  # what a killed run left
    staging = staging_path(paths.DATA, "package", STAGING)
    staging.mkdir()
    try:
        readme, credits_csv = staging / "README.md", staging / "ATTRIBUTION.csv"
        readme.write_text(dataset_readme(name, meta))
        credits.to_csv(credits_csv, index=False, lineterminator="\n")
        files.update(dataset.decided_manifests(staging))
        data = publish(registry, name, {**files, "README.md": readme, "ATTRIBUTION.csv": credits_csv}, meta,
                       params.package.message, accept_latest=same_dataset(name, display, params.package.allow_other_labels))
        print(published_line(name, registry, data, "dataset"))
        model_info = None
        if model_files:
            model_meta = model.metadata(params, name, data.top_hash, display, model.scalar_metrics(model_files))
            model_readme_file = staging / "model-README.md"
            model_readme_file.write_text(model_readme(model_package, model_meta))
            trained = publish(registry, model_package, {**model_files, "README.md": model_readme_file}, model_meta,
                              params.package.message, accept_latest=same_kind(model_package, MODEL))
            model_info = {"name": model_package, "top_hash": trained.top_hash}
            print(published_line(model_package, registry, trained, "model  "))
        else:
            print(f"no {paths.MODEL}: only the dataset was published (run the train stage for {model_package})")
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    write_package_info(registry, name, data, model_info)
    return PackageSummary(name, registry.shown, data.top_hash, model_package if model_info else None,
                          meta["dataset"]["images"], len(files) + 2)
