"""The audit's report: ``index.html`` with contact sheets a person can scan in a minute.

Sections: per label, the crops whose labels are most suspicious (given and suggested label, label quality),
then the outliers, then each quality issue. Every tile is captioned with what decided it; rejected tiles
are framed red, flagged ones orange. Only crops with an issue are shown; the counts are in the tables.
"""
from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageOps

from pipeline.core.audit.ledger import DECISIONS, ISSUES, QUALITY
from pipeline.core.base.io import atomic_path, write_text

TILE = 112
CAPTION = 30
COLUMNS = 8
#: most tiles in one sheet
SHOWN = 24
Caption = Callable[[pd.Series], list[str]]
FRAME = {"rejected": (200, 30, 30), "flagged": (230, 140, 0), "kept": (120, 120, 120)}


def tile(path: Path, lines: list[str], decision: str) -> Image.Image:
    """One crop fitted into a square, framed by its decision, with up to two caption lines under it."""
    canvas = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    try:
        with Image.open(path) as image:
            image.draft("RGB", (TILE, TILE))
            picture = ImageOps.contain(ImageOps.exif_transpose(image).convert("RGB"), (TILE - 8, TILE - 8))
        canvas.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
    except (OSError, Image.DecompressionBombError):
        pass  # an unreadable file stays a blank tile with its caption
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, TILE - 1, TILE - 1), outline=FRAME.get(decision, FRAME["kept"]), width=3)
    for row, line in enumerate(lines[:2]):
        draw.text((3, TILE + 2 + 13 * row), line[:20], fill="black")
    return canvas


def contact_sheet(rows: pd.DataFrame, files: pd.Series, caption: Caption) -> Image.Image:
    """``rows`` as tiles, :data:`COLUMNS` a row; ``caption(row)`` gives each tile's lines."""
    n = len(rows)
    sheet = Image.new("RGB", (COLUMNS * TILE, max(1, -(-n // COLUMNS)) * (TILE + CAPTION)), "white")
    for i, (index, row) in enumerate(rows.iterrows()):
        sheet.paste(tile(files[index], caption(row), row["decision"]),
                    ((i % COLUMNS) * TILE, (i // COLUMNS) * (TILE + CAPTION)))
    return sheet


def _label_caption(row: pd.Series) -> list[str]:
    return [f"-> {row['suggested_label']}" if row["suggested_label"] else "(no suggestion)",
            f"quality {row['label_quality']:.3f}"]


def _issue_caption(row: pd.Series) -> list[str]:
    return [str(row["Label"]), f"{row['score']:.3g} (cut {row['threshold']:.3g})"]


def write_report(ledger: pd.DataFrame, files: pd.Series, out: Path, title: str) -> Path:
    """``out/index.html`` and its PNG sheets; ``files`` maps each ledger row (by index) to its image file."""
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>", _counts_table(ledger)]
    suspicious = ledger[ledger["suggested_label"] != ""]
    for n, label in enumerate(sorted(ledger["Label"].astype(str).unique())):
        rows = suspicious[suspicious["Label"].astype(str) == label].sort_values("label_quality").head(SHOWN)
        if len(rows):
            parts.append(_section(f"Label issues: given {label}", f"label-{n}.png", rows, files, out, _label_caption))
    for kind in ("outlier", *QUALITY):
        rows = ledger[ledger["issue"] == kind]
        rows = rows.sort_values("score", ascending=kind not in ("outlier", "light")).head(SHOWN)
        if len(rows):
            parts.append(_section(f"{kind.replace('_', ' ').capitalize()} ({len(ledger[ledger['issue'] == kind])})",
                                  f"{kind}.png", rows, files, out, _issue_caption))
    page = ("<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style>"
            + "\n".join(parts))
    return write_text(out / "index.html", page + "\n")


def _section(heading: str, name: str, rows: pd.DataFrame, files: pd.Series, out: Path, caption: Caption) -> str:
    with atomic_path(out / name) as tmp:
        contact_sheet(rows, files, caption).save(tmp, format="PNG")
    return f"<h2>{html.escape(heading)}</h2><img src='{name}' alt='{html.escape(heading)}'>"


def _counts_table(ledger: pd.DataFrame) -> str:
    """Crops per label and decision, and per issue."""
    counts = pd.crosstab(ledger["Label"].astype(str), ledger["decision"]).reindex(columns=list(DECISIONS),
                                                                                 fill_value=0)
    head = "<tr><th>label</th>" + "".join(f"<th>{d}</th>" for d in DECISIONS) + "</tr>"
    body = "".join(f"<tr><td>{html.escape(label)}</td>" + "".join(f"<td>{int(v)}</td>" for v in row) + "</tr>"
                   for label, row in counts.iterrows())
    issues = ", ".join(f"{k}: {int((ledger['issue'] == k).sum())}" for k in ISSUES)
    return f"<table>{head}{body}</table><p>Issues behind the decisions: {html.escape(issues)}</p>"
