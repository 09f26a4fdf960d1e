"""The split stage: leak-free, stratified train/val/test class folders from the clean crops.

All crops of one photo, of a near-duplicate group and (``split.group_by_author``) of one photographer land
in one split; whole groups are placed greedily, biggest first, towards each split's quota per label; the
audit's rejected crops are left out. Output: ``data/splits/{train,val,test}/<label_dirname>/`` (hard links
to data/crops), ``splits.parquet`` and ``labels.json``, rebuilt on every run; ``metrics/split.json``, what grouping by
photographer prevented and cost; ``metrics/dataset.json``, the dataset's size (a metric, so that
``dvc exp show`` and ``dvc metrics diff`` put it next to top-1); then the dataset report.
Why grouped, greedy and by photographer: docs/architecture.md ("split").
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.base import manifests, paths
from pipeline.core.base.errors import UserError
from pipeline.core.base.io import replace_dir, write_json, write_parquet
from pipeline.core.base.params import Params, SplitParams
from pipeline.core.base.progress import track
from pipeline.core.base.safe import is_image_id, join_inside, label_dirname
from pipeline.core.base.stages import Summary
from pipeline.core.images.groups import connected_groups
from pipeline.stages.split import report

SPLITS = paths.SPLIT_NAMES
INPUT_COLUMNS = ("ImageID", "BoxIndex", "Label", "crop_path", "keep", "dup_group")
DATASET_METRICS = paths.METRICS_DIR / "dataset.json"


def check_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """The clean manifest with the columns split relies on, ``dup_group`` as text ('' = none).

    Refuses what would make a wrong layout: missing columns, and two labels that share a folder name
    (ImageFolder would merge them). Kept rows with a bad ImageID (it would become a file name) are skipped.
    """
    manifests.CLEAN.require(manifest, INPUT_COLUMNS)
    manifest = manifest.assign(
        keep=manifest["keep"].fillna(False).astype(bool),
        dup_group=manifest["dup_group"].fillna("").astype(str),
        BoxIndex=manifest["BoxIndex"].astype("int64"),
    )
    bad = manifest["keep"] & ~manifest["ImageID"].map(is_image_id).astype(bool)
    if bad.any():  # they would become file names: skipped, and the rest of the dataset split as usual
        print(f"warning: skipped {int(bad.sum())} kept crop(s) whose ImageID is not 16 hex digits", file=sys.stderr)
        manifest = manifest.assign(keep=manifest["keep"] & ~bad)
    folders: dict[str, str] = {}
    for label in sorted(manifest["Label"].unique()):
        other = folders.setdefault(label_dirname(label), label)
        if other != label:
            raise UserError(f"labels {other!r} and {label!r} share the folder name {label_dirname(label)!r}: drop one")
    return manifest


def group_ids(manifest: pd.DataFrame) -> pd.Series:
    """For each row, the name of its leakage group: the smallest ImageID among the photos tied to it.

    Two rows are tied when they share an ImageID, a non-empty ``dup_group`` or (when the column is there) a
    non-empty ``author``: nodes are the ImageIDs, the duplicate groups and the authors, each row an edge
    between its photo and each of the others, and a leakage group a connected component.
    """
    images, image_node = np.unique(manifest["ImageID"].astype(str).to_numpy(), return_inverse=True)
    first, second, nodes = [], [], len(images)
    for column in ("dup_group", "author"):
        if column not in manifest.columns:
            continue
        value = manifest[column].fillna("").astype(str).to_numpy()
        tied = value != ""
        names, node = np.unique(value[tied], return_inverse=True)
        first.append(image_node[tied])
        second.append(nodes + node)
        nodes += len(names)
    component = connected_groups(nodes, np.concatenate(first), np.concatenate(second))
    roots = pd.Series(component[image_node], index=manifest.index)
    return manifest.groupby(roots)["ImageID"].transform("min").rename("group")


def greedy_assign(counts: np.ndarray, fractions: np.ndarray, seed: int) -> np.ndarray:
    """The split index for each group, given ``counts`` (groups x labels: crops) and one fraction per split.

    Each group goes to the open split (fraction > 0) with the largest remaining quota for the group's
    labels, each label's shortfall measured relative to its size so a rare label weighs as much as a
    common one. Ties go to the earlier split (train).
    """
    totals = counts.sum(axis=0)
    targets = fractions[:, None] * totals[None, :]
    placed = np.zeros_like(targets, dtype=float)
    scale = 1.0 / np.maximum(totals, 1)
    closed = fractions <= 0
    order = np.random.default_rng(seed).permutation(len(counts))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    choice = np.empty(len(counts), dtype=np.int64)
    for g in order:
        shortfall = ((targets - placed) * scale) @ counts[g]
        shortfall[closed] = -np.inf
        choice[g] = int(np.argmax(shortfall))
        placed[choice[g]] += counts[g]
    return choice


def assign_splits(manifest: pd.DataFrame, params: SplitParams) -> pd.DataFrame:
    """One row per kept crop: ``ImageID BoxIndex Label split path group`` plus ``crop_path`` (the source).

    Rows are sorted by split, label, ImageID and BoxIndex, so equal inputs give equal bytes.
    """
    manifest = check_manifest(manifest)
    manifest = manifest.assign(group=group_ids(manifest))
    kept = manifest[manifest["keep"]]
    labels = sorted(manifest["Label"].unique())
    _require_min_per_label(kept, labels, params.min_per_label)
    counts = pd.crosstab(kept["group"], kept["Label"]).reindex(columns=labels, fill_value=0)
    fractions = np.array([params.train, params.val, params.test])
    choice = greedy_assign(counts.to_numpy(), fractions, params.seed)
    table = kept.assign(split=kept["group"].map(pd.Series(np.array(SPLITS)[choice], index=counts.index)))
    _require_every_split(table, labels, fractions)
    table = table.assign(
        path=table["split"] + "/" + table["Label"].map(label_dirname) + "/"
        + table["ImageID"] + "_" + table["BoxIndex"].astype(str) + ".jpg",
        split_order=table["split"].map(SPLITS.index),
    )
    table = table.sort_values(["split_order", "Label", "ImageID", "BoxIndex"], kind="stable")
    return table[[*manifests.SPLITS.columns, "crop_path"]].reset_index(drop=True)


def _require_min_per_label(kept: pd.DataFrame, labels: list[str], minimum: int) -> None:
    counts = kept["Label"].value_counts()
    short = [(label, int(counts.get(label, 0))) for label in labels if counts.get(label, 0) < minimum]
    if short:
        named = ", ".join(f"{label!r} has {n}" for label, n in short)
        raise UserError(
            f"too few clean crops to split: {named} (split.min_per_label is {minimum}); add images for it "
            f"(select.limit_per_label, source.subsets) or lower split.min_per_label in params.yaml"
        )


def _require_every_split(table: pd.DataFrame, labels: list[str], fractions: np.ndarray) -> None:
    """Each label needs at least one crop in every split that has a fraction, or training/evaluation breaks."""
    present = set(zip(table["Label"], table["split"]))
    for label in labels:
        for split, fraction in zip(SPLITS, fractions):
            if fraction > 0 and (label, split) not in present:
                rows = table[table["Label"] == label]
                raise UserError(
                    f"label {label!r} got no crops in the {split} split: its {len(rows)} clean crops come from "
                    f"only {rows['group'].nunique()} photo group(s) (a photo and its near duplicates stay together); "
                    f"add images for it, or set split.{split} to 0 and the other fractions to sum to 1"
                )


def leave_out_rejected(manifest: pd.DataFrame, ledger: pd.DataFrame) -> pd.DataFrame:
    """The clean manifest with the audit's rejected crops no longer kept (reason ``audit_<issue>``)."""
    rejected = ledger.loc[ledger["decision"] == "rejected", ["ImageID", "BoxIndex", "issue"]]
    rejected = rejected.assign(BoxIndex=rejected["BoxIndex"].astype("int64"))
    issue = manifest[["ImageID", "BoxIndex"]].astype({"BoxIndex": "int64"}).merge(
        rejected, on=["ImageID", "BoxIndex"], how="left")["issue"].to_numpy()
    hit = pd.notna(issue) & manifest["keep"].fillna(False).astype(bool).to_numpy()
    manifest = manifest.copy()
    manifest.loc[hit, "keep"] = False
    manifest.loc[hit, "reject_reason"] = ["audit_" + str(i) for i in issue[hit]]
    return manifest


def with_authors(manifest: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """``manifest`` plus ``author``: each photo's AuthorProfileURL, else its Author ('' when neither is known)."""
    url = selected.get("AuthorProfileURL", pd.Series("", index=selected.index)).fillna("").astype(str)
    name = selected.get("Author", pd.Series("", index=selected.index)).fillna("").astype(str)
    author = pd.Series(url.where(url != "", name).to_numpy(), index=selected["ImageID"].astype(str).to_numpy())
    author = author[~author.index.duplicated()]
    return manifest.assign(author=manifest["ImageID"].astype(str).map(author).fillna(""))


def label_fractions(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per label, the fraction of its crops in each split (what stratification aims at)."""
    counts = pd.crosstab(table["Label"], table["split"]).reindex(columns=list(SPLITS), fill_value=0)
    return {str(label): {s: round(int(row[s]) / max(int(row.sum()), 1), 4) for s in SPLITS}
            for label, row in counts.iterrows()}


def largest_gap(fractions: dict[str, dict[str, float]], params: SplitParams) -> float:
    """The largest distance of any label's split fraction from the one asked for (0 = exact stratification)."""
    target = {"train": params.train, "val": params.val, "test": params.test}
    return round(max((abs(f[s] - target[s]) for f in fractions.values() for s in SPLITS), default=0.0), 4)


def author_leak_report(grouped: pd.DataFrame, photo_only: pd.DataFrame, params: SplitParams) -> dict:
    """What grouping by photographer prevented, and what it cost in balance.

    ``grouped`` and ``photo_only``: :func:`assign_splits` tables made with and without the author ties, both
    with an ``author`` column. Prevented: in ``photo_only``, the authors whose photos landed in more than one
    split (and in train and test both), with their photos and crops. Cost: each label's split fractions in
    both tables, and the largest gap from ``params``' fractions in each.
    """
    known = photo_only[photo_only["author"] != ""]
    spans = known.groupby("author")["split"].agg(frozenset)
    across = photo_only[photo_only["author"].isin(spans[spans.map(len) > 1].index)]
    train_test = photo_only[photo_only["author"].isin(spans[spans.map({"train", "test"}.issubset)].index)]
    balance = {"grouped": label_fractions(grouped), "photo_only": label_fractions(photo_only)}
    return {
        "group_by_author": True,
        "authors": int(known["author"].nunique()),
        "prevented": {
            "authors_across_splits": int(across["author"].nunique()),
            "photos_across_splits": int(across["ImageID"].nunique()),
            "crops_across_splits": len(across),
            "authors_in_train_and_test": int(train_test["author"].nunique()),
            "photos_in_train_and_test": int(train_test["ImageID"].nunique()),
        },
        "largest_gap": {name: largest_gap(fractions, params) for name, fractions in balance.items()},
        "fractions": balance,
    }


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link ``src`` at ``dst`` (no extra disk, instant); copy where the file system refuses.

    Links fail across devices (EXDEV) and on file systems without them (FAT, some network shares).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_splits(table: pd.DataFrame) -> None:
    """Rebuild ``data/splits`` from ``table`` (see :func:`assign_splits`): class folders, manifest, labels."""
    sources = []
    for crop_path in table["crop_path"]:
        src = join_inside(paths.CROPS_DIR, crop_path)
        if src is None or not src.is_file():
            raise UserError(
                f"crop {crop_path!r} listed in {paths.CLEAN_MANIFEST} is not in {paths.CROPS_DIR}: "
                "re-run the crop and clean stages (dvc repro clean)"
            )
        sources.append(src)
    labels = {label_dirname(label): label for label in sorted(table["Label"].unique())}
    with replace_dir(paths.SPLITS_DIR) as new:
        for src, rel in track(list(zip(sources, table["path"])), "split", "crop", leave=False):
            link_or_copy(src, new / rel)
        write_parquet(table[list(manifests.SPLITS.columns)], new / paths.SPLITS_MANIFEST.name)
        (new / paths.SPLITS_LABELS.name).write_text(json.dumps(labels, indent=2, sort_keys=True) + "\n")


def dataset_size(table: pd.DataFrame) -> dict[str, int]:
    """The crops in the splits: all of them (``images``, the column ``pipeline.demo.COMPARE_COMMAND`` keeps)
    and each split's."""
    sizes = table["split"].value_counts()
    return {"images": len(table), **{split: int(sizes.get(split, 0)) for split in SPLITS}}


@dataclass(frozen=True)
class SplitSummary(Summary):
    """Crops per split, how many labels, what grouping by photographer prevented and cost (``leaks``, as in
    ``metrics/split.json``), and the report's page."""

    sizes: dict[str, int]
    labels: int
    leaks: dict
    report: Path

    def lines(self) -> list[str]:
        grouped = []
        if self.leaks.get("group_by_author"):
            prevented, gap = self.leaks["prevented"], self.leaks["largest_gap"]
            grouped = [f"split: grouping by author kept {prevented['authors_across_splits']} author(s) "
                       f"({prevented['photos_across_splits']} photo(s), {prevented['crops_across_splits']} crop(s)) "
                       f"from straddling splits, {prevented['authors_in_train_and_test']} of them train and test; "
                       f"largest gap from the split fractions {gap['grouped']:.3f} (photo grouping only: "
                       f"{gap['photo_only']:.3f})"]
        counts = ", ".join(f"{self.sizes.get(s, 0)} {s}" for s in SPLITS)
        return [*grouped,
                f"split: {counts} crops of {self.labels} label(s) -> {paths.SPLITS_DIR}, {DATASET_METRICS}",
                f"report: {self.report}"]


def run(params: Params) -> SplitSummary:
    """The stage: the clean crops the audit did not reject, into ``data/splits``, what grouping by
    photographer prevented (``metrics/split.json``), the dataset's size (``metrics/dataset.json``), and the
    dataset report."""
    manifest = leave_out_rejected(manifests.CLEAN.read(), manifests.LEDGER.read())
    if params.split.group_by_author:
        manifest = with_authors(manifest, manifests.SELECTED.read())
    table = assign_splits(manifest, params.split)
    leaks: dict = {"group_by_author": False}
    if "author" in manifest.columns:
        authors = manifest.drop_duplicates("ImageID").set_index("ImageID")["author"]
        photo_only = assign_splits(manifest.drop(columns="author"), params.split)
        leaks = author_leak_report(table.assign(author=table["ImageID"].map(authors)),
                                   photo_only.assign(author=photo_only["ImageID"].map(authors)), params.split)
    write_splits(table)
    write_json(report.SPLIT_METRICS, leaks)
    sizes = dataset_size(table)
    write_json(DATASET_METRICS, sizes)
    return SplitSummary(sizes, int(table["Label"].nunique()), leaks, report.build_report())
