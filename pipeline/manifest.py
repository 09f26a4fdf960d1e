"""Parquet manifests (the data contract between stages) and output folders, written atomically."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # pandas is imported only when a DataFrame is passed: it costs ~0.3 s at start-up
    import pandas as pd


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temp path next to ``path``; rename it onto ``path`` when the block succeeds.

    Readers (DVC, people, the next stage) then see the old file or the new one, never half of one; on an
    error the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(table: pd.DataFrame | pa.Table, path: str | Path) -> Path:
    """Write ``table`` to ``path`` through a temporary file and a rename, so readers never see half a file.

    Written deterministically (no pandas index, fixed compression) so that equal data gives equal bytes.
    """
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)


def read_parquet(path: str | Path, what: str = "input") -> pd.DataFrame:
    """Read a manifest, with a one-line hint about which stage makes it when it is missing."""
    return read_table(path, what).to_pandas()


def read_table(path: str | Path, what: str = "input") -> pa.Table:
    """:func:`read_parquet` as an Arrow table, for stages that start fast by never importing pandas."""
    from pipeline.errors import UserError

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found: run the stage that writes the {what} first (see dvc.yaml)")
    return pq.read_table(path)


@contextmanager
def replace_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty sibling folder to build ``path``'s new contents in; swap it in when the block ends.

    A stage's output folder then holds exactly this run's files (nothing stale from an earlier run with
    other params), and readers never see it half built; on an error the old folder is left untouched.
    The sibling sits next to ``path`` so the swap is a rename and hard links into nearby folders work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # half-built folders of a killed run (any pid) would otherwise stay forever: DVC runs one stage at a time
    for leftover in [*path.parent.glob(f".{path.name}.*.new"), *path.parent.glob(f".{path.name}.*.old")]:
        shutil.rmtree(leftover, ignore_errors=True)
    new = path.with_name(f".{path.name}.{os.getpid()}.new")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    new.mkdir()
    try:
        yield new
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)
