"""Small outputs of the train, evaluate and lr_find commands (JSON, CSV, PNG), each written atomically.

DVC and people read these files while other runs may be writing them; a temp file plus a rename means a
reader sees the old file or the new one, never half of one. Figures use matplotlib's object API (no
pyplot), so no GUI backend is ever chosen and nothing global is left behind.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pipeline.manifest import atomic_path


def write_json(path: Path, data: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def save_figure(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path
