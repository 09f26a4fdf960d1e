"""Parquet manifests: the data contract between stages, written atomically."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet(table: pd.DataFrame | pa.Table, path: str | Path) -> Path:
    """Write ``table`` to ``path`` through a temporary file and a rename, so readers never see half a file.

    Written deterministically (no pandas index, fixed compression) so that equal data gives equal bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path


def read_parquet(path: str | Path, what: str = "input") -> pd.DataFrame:
    """Read a manifest, with a one-line hint about which stage makes it when it is missing."""
    from pipeline.errors import UserError

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found: run the stage that writes the {what} first (see dvc.yaml)")
    return pq.read_table(path).to_pandas()
