"""Which crops came or went between two versions of a dataset, per label, and why.

A crop is ``(ImageID, BoxIndex, Label)`` in ``splits/splits.parquet``. Why it went is what the newer
version's own records say about it: the audit's ledger (``manifests/audit.parquet``: rejected, with the
issue and score), else the clean manifest (rejected, with clean's reason), else that it was no longer
selected; why one came, what the older version said. Versions packaged before the audit have no ledger:
their crops simply have no audit reason.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

KEY = ["ImageID", "BoxIndex", "Label"]
SPLITS, LEDGER, CLEAN, SELECTED = ("splits/splits.parquet", "manifests/audit.parquet", "manifests/clean.parquet",
                                   "manifests/selected.parquet")
#: the package entries a diff reads, and all that ``pull --diff`` fetches of each version (not the shards)
READS = frozenset({SPLITS, LEDGER, CLEAN, SELECTED})


def _table(root: Path, key: str, columns: list[str]) -> pd.DataFrame:
    """``root/key`` (an installed package's file) with ``columns``; empty when that version lacks it."""
    path = root / key
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    table = pd.read_parquet(path)
    table = table.assign(**{c: "" for c in columns if c not in table.columns})[columns]
    return table.astype({"BoxIndex": "int64", "ImageID": str, "Label": str})


def _reasons(root: Path, went: bool) -> pd.Series:
    """By crop key: what the version at ``root`` records against it (''  when nothing)."""
    ledger = _table(root, LEDGER, [*KEY, "decision", "issue", "score"])
    ledger = ledger[ledger["decision"] == "rejected"]
    clean = _table(root, CLEAN, [*KEY, "keep", "reject_reason"])
    clean = clean[~clean["keep"].fillna(False).astype(bool)]
    prefix = "" if went else "no longer "
    reasons = {tuple(k): f"{prefix}rejected by clean: {r or 'unknown'}"
               for *k, r in clean[[*KEY, "reject_reason"]].itertuples(index=False)}
    reasons.update({tuple(k): f"{prefix}rejected by the audit: {issue} (score {float(score):.3g})"
                    for *k, issue, score in ledger[[*KEY, "issue", "score"]].itertuples(index=False)})
    return pd.Series(reasons, dtype=object)


def crop_changes(old: Path, new: Path) -> pd.DataFrame:
    """One row per crop in only one of the two installed versions: ``KEY``, ``change`` (came/went), ``why``."""
    before = _table(old, SPLITS, KEY)
    after = _table(new, SPLITS, KEY)
    merged = before.merge(after, on=KEY, how="outer", indicator=True)
    rows = []
    for change, side, root in (("went", "left_only", new), ("came", "right_only", old)):
        part = merged[merged["_merge"] == side][KEY]
        reasons = _reasons(root, went=change == "went")
        selected = _table(root, SELECTED, KEY)
        known = set(map(tuple, selected[KEY].itertuples(index=False)))
        fallback = "no longer selected" if change == "went" else "newly selected"
        for key in map(tuple, part.itertuples(index=False)):
            why = reasons.get(key, "") or (fallback if key not in known else
                                           "left out of the splits" if change == "went" else "newly in the splits")
            rows.append({**dict(zip(KEY, key)), "change": change, "why": why})
    return pd.DataFrame(rows, columns=[*KEY, "change", "why"]).sort_values([*KEY], kind="stable", ignore_index=True)


def describe(changes: pd.DataFrame) -> list[str]:
    """Lines for a person: per label, crops that came and went (and whole photos), then counts per reason."""
    if changes.empty:
        return ["no crop came or went"]
    lines = []
    for label, rows in changes.groupby("Label", sort=True):
        came, went = rows[rows["change"] == "came"], rows[rows["change"] == "went"]
        lines.append(f"{label}: +{len(came)} crop(s) ({came['ImageID'].nunique()} photo(s)), "
                     f"-{len(went)} crop(s) ({went['ImageID'].nunique()} photo(s))")
        for (change, why), n in rows.groupby(["change", "why"]).size().items():
            lines.append(f"  {'+' if change == 'came' else '-'}{n} {why}")
    return lines
