"""``python -m pipeline.audit DIR``: the audit stage's checks on any class-folder dataset, changing nothing in it.

``DIR/<label>/*`` or ``DIR/{train,val,test}/<label>/*`` (ours, one pulled from a registry, or anyone's):
every image gets the same embedding, label-issue, outlier and quality checks as the clean crops do in the
pipeline (:mod:`pipeline.core.audit`), with the ``audit`` settings of ``./params.yaml`` when there is one
(defaults otherwise). Writes to ``--out``: ``audit.csv`` (path, given label, issue, score, suggested label,
decision), ``ledger.parquet`` (every column), ``index.html`` with contact sheets, and the embedding cache
(``--cache``). ``DIR`` is only read: the output folder may not be inside it.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.core.audit.ledger import audit
from pipeline.core.audit.report import write_report
from pipeline.core.base import paths
from pipeline.core.base.errors import UserError, run_cli
from pipeline.core.base.io import write_parquet
from pipeline.core.base.params import load_params

CSV_COLUMNS = ["path", "given_label", "issue", "score", "suggested_label", "decision"]


def class_folders(root: Path) -> pd.DataFrame:
    """One row per image file: ``path`` (relative to ``root``), ``Label`` (its folder) and ``file``."""
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    split_layout = any((root / s).is_dir() for s in paths.SPLIT_NAMES)
    tops = [root / s for s in paths.SPLIT_NAMES if (root / s).is_dir()] if split_layout else [root]
    rows = []
    for top in tops:
        for folder in sorted(d for d in top.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for file in sorted(f for f in folder.iterdir()
                               if f.is_file() and f.suffix.lower() in paths.IMAGE_SUFFIXES):
                rows.append({"path": str(file.relative_to(root)), "Label": folder.name, "file": file})
    table = pd.DataFrame(rows, columns=["path", "Label", "file"])
    if table["Label"].nunique() < 2:
        raise UserError(f"{root}: expected class folders (DIR/<label>/* or DIR/train/<label>/*) of at least two "
                        f"labels, found {table['Label'].nunique()} with images ({', '.join(paths.IMAGE_SUFFIXES)})")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.audit",
        description="Audit a class-folder dataset (DIR/<label>/* or DIR/{train,val,test}/<label>/*): label issues "
        "(cross-validated on pretrained embeddings, confident learning), outliers, blurry/dark/light/flat/odd-aspect "
        "images. Writes audit.csv, ledger.parquet and index.html to --out; changes nothing in DIR. Settings: the "
        "audit section of ./params.yaml, if any.",
    )
    parser.add_argument("dir", type=Path, help="the dataset's folder")
    parser.add_argument("--out", type=Path, default=None, help="where the report goes (default: ./audit-<DIR name>)")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (default: <out>/embeddings)")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    out = (args.out or Path(f"audit-{root.name}")).resolve()
    if out == root or root in out.parents:
        raise UserError(f"--out {out} is inside {root}: the audit changes nothing in the folder it reads")
    params = load_params()
    table = class_folders(root)
    ledger, summary = audit(table.drop(columns="file"), list(table["file"]), params.audit,
                            args.cache or out / "embeddings", params.runtime.device)
    files = table.set_index("path")["file"]
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(ledger, out / "ledger.parquet")
    ledger.rename(columns={"Label": "given_label"})[CSV_COLUMNS].to_csv(out / "audit.csv", index=False)
    page = write_report(ledger, pd.Series(list(ledger["path"].map(files)), index=ledger.index), out,
                        f"Audit of {root.name}")
    d = summary["decisions"]
    print(f"audit: {d['kept']} kept, {d['flagged']} flagged, {d['rejected']} rejected of {summary['crops']} images "
          f"({summary['unreadable']} unreadable skipped, {summary['embeddings_computed']} embeddings computed) "
          f"-> {out / 'audit.csv'}, {page}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
