"""``python -m pipeline.stages.audit``: judge what clean let through; the split leaves out what it rejects.

Between clean and split. Clean removes what is broken (placeholders, corrupt, tiny, copies); the audit looks
at what is left with the pretrained backbone's eyes (:mod:`pipeline.core.audit`): crops whose label the rest
of the data disagrees with, crops unlike any other, and blurry, dark, light, flat or sliver-shaped crops.
Each kind of issue has an action in the ``audit`` params (``off``, ``flag``, ``reject``).

Output (``docs/architecture.md``): ``data/audit/ledger.parquet``, one row per crop clean kept:
``ImageID BoxIndex Label crop_path`` and the ledger's columns (:mod:`pipeline.core.audit.ledger`);
``data/audit/summary.json`` (counts; no timings or cache hits, so equal inputs give equal bytes); ``reports/audit/``.
Embeddings are cached in ``data/embeddings`` by crop content, so changing an action or a threshold re-runs
the audit without computing one again. The cache is not a DVC output (dvc.yaml says why): the ledger is the
stage's result, and DVC neither hashes the cache's file per crop on every ``dvc status`` nor deletes it.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipeline.core.audit.ledger import audit
from pipeline.core.audit.report import write_report
from pipeline.core.base import paths
from pipeline.core.base.errors import PipelineFailure, UserError
from pipeline.core.base.io import read_parquet, replace_dir, write_json, write_parquet
from pipeline.core.base.params import Params
from pipeline.core.base.safe import join_inside
from pipeline.core.base.stages import Summary

KEYS = ["ImageID", "BoxIndex", "Label", "crop_path"]


def kept_crops(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows clean kept, sorted by ImageID and BoxIndex (so the ledger's order is the data's, not a run's)."""
    missing = [c for c in [*KEYS, "keep"] if c not in manifest.columns]
    if missing:
        raise UserError(f"{paths.CLEAN_MANIFEST} lacks column(s) {', '.join(missing)}: re-run the clean stage "
                        "(dvc repro clean)")
    kept = manifest[manifest["keep"].fillna(False).astype(bool)][KEYS]
    kept = kept.assign(BoxIndex=kept["BoxIndex"].astype("int64"), Label=kept["Label"].astype(str))
    return kept.sort_values(["ImageID", "BoxIndex"], kind="stable").reset_index(drop=True)


def crop_files(kept: pd.DataFrame) -> list:
    """The crop file of each row, inside ``data/crops``; a missing one means the crop stage must run again."""
    files = []
    for crop_path in kept["crop_path"]:
        path = join_inside(paths.CROPS_DIR, crop_path)
        if path is None or not path.is_file():
            raise UserError(f"crop {crop_path!r} listed in {paths.CLEAN_MANIFEST} is not in {paths.CROPS_DIR}: "
                            "re-run the crop and clean stages (dvc repro clean)")
        files.append(path)
    return files


def run(params: Params) -> AuditSummary:
    """Audit the clean crops; write the ledger, its summary and the report. Returns the summary with timings."""
    manifest = read_parquet(paths.CLEAN_MANIFEST, "clean manifest (python -m pipeline.stages.clean)")
    kept = kept_crops(manifest)
    files = crop_files(kept)
    ledger, summary = audit(kept, files, params.audit, paths.EMBEDDINGS_DIR, params.runtime.device)
    if len(ledger) != len(kept):
        raise PipelineFailure(f"{len(kept) - len(ledger)} crop file(s) kept by clean no longer decode: "
                              "re-run the crop and clean stages (dvc repro clean)")
    with replace_dir(paths.AUDIT_DIR) as new:
        write_parquet(ledger, new / paths.AUDIT_LEDGER.name)
        # counts only: what was computed or read from the cache, and how long it took, are the run's circumstances
        write_json(new / "summary.json", {k: summary[k] for k in ("crops", "decisions", "issues")})
    with replace_dir(paths.AUDIT_REPORT) as new:
        write_report(ledger, pd.Series(files), new, "Audit of the clean crops")
    return AuditSummary(summary)


@dataclass(frozen=True)
class AuditSummary(Summary):
    """The audit's counts (crops, decisions, issues) and this run's circumstances (embeddings computed, seconds)."""

    counts: dict

    def lines(self) -> list[str]:
        c = self.counts
        decisions, seconds = c["decisions"], c["seconds"]
        issues = "".join(f"; {n} {kind}" for kind, n in c["issues"].items() if n)
        return [f"audit: {decisions['kept']} kept, {decisions['flagged']} flagged, {decisions['rejected']} rejected "
                f"of {c['crops']} crops{issues} ({c['embeddings_computed']} embeddings computed, "
                f"{seconds['embeddings']:.1f} s) -> {paths.AUDIT_LEDGER}"]
