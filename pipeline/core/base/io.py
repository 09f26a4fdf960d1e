"""Every file a stage writes goes through here: atomically, and deterministically where it is data.

Readers (DVC, people, the next stage, a second run in the same workspace) then see the old file or the
new one, never half of one. Parquet manifests are the data contract between stages; JSON, CSV and PNG are
the small outputs (metrics, plots, figures). Figures use matplotlib's object API (no pyplot), so no GUI
backend is ever chosen and nothing global is left behind.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.base.errors import UserError
from pipeline.core.base.staging import staging_path, sweep

if TYPE_CHECKING:  # pandas and matplotlib are imported only when used: they cost ~0.3 s each at start-up
    import pandas as pd
    from matplotlib.figure import Figure

#: the suffix of every temporary file this project writes; a run sweeps the ones a killed run left
TMP_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    """The hidden sibling a write to ``path`` goes through: ``.<name>.<pid>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temp path next to ``path``; rename it onto ``path`` when the block succeeds.

    On an error the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def sweep_temporaries(folder: Path) -> int:
    """Delete the hidden ``.*.tmp`` files a killed run left in ``folder``; return how many."""
    count = 0
    for tmp in folder.glob(f".*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


def write_parquet(table: pd.DataFrame | pa.Table, path: str | Path) -> Path:
    """Write ``table`` atomically; deterministically (no pandas index, fixed compression), so equal data
    gives equal bytes."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)


def read_parquet(path: str | Path, what: str = "input") -> pd.DataFrame:
    """Read a manifest, with a one-line hint about which stage makes it when it is missing."""
    return read_table(path, what).to_pandas()


def read_table(path: str | Path, what: str = "input", columns: list[str] | None = None) -> pa.Table:
    """:func:`read_parquet` as an Arrow table, for stages that start fast by never importing pandas."""
    with _readable(path, what):
        return pq.read_table(path, columns=columns)


def open_parquet(path: str | Path, what: str = "input", **options: Any) -> pq.ParquetFile:
    """A :class:`pyarrow.parquet.ParquetFile` to read in parts, with :func:`read_table`'s one-line errors."""
    with _readable(path, what):
        return pq.ParquetFile(path, **options)


@contextmanager
def _readable(path: str | Path, what: str) -> Iterator[None]:
    """A missing, empty or damaged file between stages is one line naming the file and what makes it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found: run the stage that writes the {what} first (see dvc.yaml)")
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a readable Parquet file ({reason}): run the stage that writes the "
                        f"{what} again (see dvc.yaml)") from None


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path: str | Path, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    return Path(path)


def save_figure(figure: Figure, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


@contextmanager
def replace_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty sibling folder to build ``path``'s new contents in; swap it in when the block ends.

    A stage's output folder then holds exactly this run's files (nothing stale from an earlier run with
    other params), and readers never see it half built; on an error the old folder is left untouched.
    The sibling sits next to ``path`` so the swap is a rename and hard links into nearby folders work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # half-built folders of killed runs would otherwise stay forever; a live run's are its own business
    sweep(path.parent, "new")
    sweep(path.parent, "old")
    new, old = staging_path(path.parent, path.name, "new"), staging_path(path.parent, path.name, "old")
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
