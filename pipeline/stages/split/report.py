"""The dataset report, a folder that opens in a browser from disk (the split stage writes it; so does
``python -m pipeline.report``).

``reports/dataset/index.html`` shows, per label and split, the crop counts and a contact sheet of sample
crops, and every rejected crop or photo grouped by its reason, so a person can see what the numbers mean.
Class balance also goes to ``plots/class_balance.csv`` (for ``dvc plots``) and a PNG chart. The same crops
are shown on every run, the page loads nothing from the network and runs no script, and every string from
the data is HTML-escaped: labels and metadata come from the internet. Details: docs/architecture.md
("split").
"""
from __future__ import annotations

import hashlib
import html
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageOps

from pipeline.core.base import manifests, paths
from pipeline.core.base.io import atomic_path, replace_dir
from pipeline.core.base.progress import track
from pipeline.core.base.safe import join_inside, label_dirname
from pipeline.core.base.status import Reject

SPLITS = paths.SPLIT_NAMES
#: the split stage's metrics: what grouping by photographer prevented and cost (written before the report)
SPLIT_METRICS = paths.METRICS_DIR / "split.json"
#: contract order of clean's reasons; any other reason is listed after these, alphabetically
REASONS = tuple(Reject)
TILE = 128            # a thumbnail's square side, pixels
GAP = 4               # space around tiles on a contact sheet
COLUMNS = 8           # tiles per contact-sheet row
SAMPLES = 32          # tiles per contact sheet at most
BACKGROUND = (255, 255, 255)
UNDECODABLE = (128, 128, 128)   # tile for a file Pillow cannot decode (or refuses: too many pixels)
NO_FILE = (64, 64, 64)          # tile for a row with no file to show (never downloaded)


def text_tile(text: str, colour: tuple[int, int, int]) -> Image.Image:
    """A flat tile with a word on it, standing in for a picture that cannot be shown."""
    tile = Image.new("RGB", (TILE, TILE), colour)
    draw = ImageDraw.Draw(tile)
    left, top, right, bottom = draw.textbbox((0, 0), text)  # no anchor: bitmap fallback fonts lack it
    draw.text(((TILE - right - left) // 2, (TILE - bottom - top) // 2), text, fill=(255, 255, 255))
    return tile


def thumbnail(path: Path | None) -> Image.Image:
    """A ``TILE`` x ``TILE`` thumbnail of an image file, scaled to fit and letterboxed; a text tile when it
    cannot be shown.

    JPEGs are decoded at reduced scale (``draft``), so a sheet of full-size photos stays quick. Pillow's
    decompression-bomb warning is raised as an error, so a huge file becomes a tile instead of eating memory.
    """
    if path is None or not path.is_file():
        return text_tile("no file", NO_FILE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.draft("RGB", (TILE, TILE))
                picture = im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        return text_tile("undecodable", UNDECODABLE)
    picture = ImageOps.contain(picture, (TILE, TILE))  # small crops are scaled up too, to be seen
    tile = Image.new("RGB", (TILE, TILE), BACKGROUND)
    tile.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
    return tile


def sheet_size(n: int) -> tuple[int, int]:
    """Pixel size of a contact sheet of ``n`` tiles (``COLUMNS`` per row, ``GAP`` around each)."""
    cols = max(1, min(COLUMNS, n))
    rows = max(1, math.ceil(n / cols))
    return GAP + cols * (TILE + GAP), GAP + rows * (TILE + GAP)


def contact_sheet(files: Sequence[Path | None]) -> Image.Image:
    """Thumbnails of ``files`` in a grid, row by row, in the given order."""
    sheet = Image.new("RGB", sheet_size(len(files)), BACKGROUND)
    cols = max(1, min(COLUMNS, len(files)))
    for i, path in enumerate(files):
        row, col = divmod(i, cols)
        sheet.paste(thumbnail(path), (GAP + col * (TILE + GAP), GAP + row * (TILE + GAP)))
    return sheet


def sample(rows: pd.DataFrame, n: int = SAMPLES) -> pd.DataFrame:
    """Up to ``n`` rows, chosen and ordered by a hash of the crop's name (stable across runs)."""
    keys = (rows["ImageID"].astype(str) + "_" + rows["BoxIndex"].astype(str)).map(
        lambda key: hashlib.sha1(key.encode()).hexdigest()
    )
    return rows.assign(_key=keys).sort_values("_key", kind="stable").head(n).drop(columns="_key")


def class_balance(splits: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """``label split count`` for every label and split (zeros included), plus ``bar`` = "label (split)".

    ``bar`` gives ``dvc plots`` one bar per label and split (its horizontal bar template has no colour
    by column, so bars of one label would otherwise overlap).
    """
    counts = splits.groupby(["Label", "split"]).size()
    rows = [(label, split, int(counts.get((label, split), 0))) for label in labels for split in SPLITS]
    table = pd.DataFrame(rows, columns=["label", "split", "count"])
    return table.assign(bar=table["label"] + " (" + table["split"] + ")")


def balance_chart(balance: pd.DataFrame, path: Path) -> None:
    """A grouped horizontal bar chart of ``balance`` (one group per label, one bar per split)."""
    labels = list(dict.fromkeys(balance["label"]))
    height = 0.8 / len(SPLITS)
    with rc_context({"text.parse_math": False}):  # a '$' in a label is text, not TeX
        fig = Figure(figsize=(7, 1.2 + 0.6 * len(labels)))  # no pyplot: Agg, no GUI, no global state
        ax = fig.subplots()
        for i, split in enumerate(SPLITS):
            counts = balance[balance["split"] == split].set_index("label").loc[labels, "count"]
            ax.barh([y + (i - 1) * height for y in range(len(labels))], counts, height=height, label=split)
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xlabel("crops")
        ax.set_title("Class balance")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)


def rejected_sources(clean: pd.DataFrame, images: pd.DataFrame) -> pd.Series:
    """For each rejected row, the file to show: its crop if there is one, else its downloaded photo, else None.

    Image-level rejections (placeholder, changed, corrupt) usually have no crop, and their photo is what
    a person wants to see; paths come from the manifests and must stay inside their stage's folder.
    """
    photo = images.drop_duplicates("ImageID").set_index("ImageID")["path"]
    crops = clean["crop_path"].map(lambda rel: join_inside(paths.CROPS_DIR, rel))
    photos = clean["ImageID"].map(photo).map(lambda rel: join_inside(paths.IMAGES_DIR, rel))
    return pd.Series(
        [crop if crop is not None and crop.is_file() else pic for crop, pic in zip(crops, photos)],
        index=clean.index, dtype=object,
    )


def reason_order(reasons: Sequence[str]) -> list[str]:
    known = [r for r in REASONS if r in set(reasons)]
    return known + sorted(set(reasons) - set(REASONS))


def build_report() -> Path:
    """Write ``reports/dataset/`` (rebuilt from scratch) and ``plots/class_balance.csv``; return the page."""
    splits, clean, images = manifests.SPLITS.read(), manifests.CLEAN.read(), manifests.IMAGES.read()
    labels = sorted(set(clean["Label"]) | set(splits["Label"]))
    balance = class_balance(splits, labels)
    rejected = clean[~clean["keep"].fillna(False).astype(bool)]
    rejected = rejected.assign(
        reject_reason=rejected["reject_reason"].fillna("").replace("", "unknown"),
        detail=rejected["detail"].fillna(""),
        source=rejected_sources(rejected, images),
    )

    with replace_dir(paths.DATASET_REPORT) as out:
        balance_chart(balance, out / "class_balance.png")
        sheets = _label_sheets(splits, labels, out)
        reject_sections = _reject_sheets(rejected, out)
        page = render_html(balance, splits, rejected, sheets, reject_sections, _leaks())
        (out / "index.html").write_text(page, encoding="utf-8")
    with atomic_path(paths.CLASS_BALANCE) as tmp:
        balance.to_csv(tmp, index=False)
    return paths.DATASET_REPORT / "index.html"


def _label_sheets(splits: pd.DataFrame, labels: Sequence[str], out: Path) -> dict[tuple[str, str], str]:
    """Write one contact sheet per label and split that has crops; map (label, split) -> file name."""
    names = {}
    for label in track(labels, "report", "label", leave=False):
        for split in SPLITS:
            rows = sample(splits[(splits["Label"] == label) & (splits["split"] == split)])
            if len(rows):
                names[(label, split)] = f"{split}_{label_dirname(label)}.png"
                files = [join_inside(paths.SPLITS_DIR, rel) for rel in rows["path"]]
                contact_sheet(files).save(out / names[(label, split)])
    return names


def _reject_sheets(rejected: pd.DataFrame, out: Path) -> list[tuple[str, str, pd.DataFrame]]:
    """One contact sheet per reason: (reason, file name, the rows shown in sheet order).

    A photo rejected as a whole has a row per box; it is shown once.
    """
    sections = []
    for reason in reason_order(list(rejected["reject_reason"].unique())):
        rows = rejected[rejected["reject_reason"] == reason]
        shown_key = rows["source"].map(str).where(rows["source"].notna(), "id:" + rows["ImageID"].astype(str))
        rows = sample(rows.loc[~shown_key.duplicated()])
        name = f"rejected_{label_dirname(reason)}.png"
        contact_sheet(list(rows["source"])).save(out / name)
        sections.append((reason, name, rows))
    return sections


def _leaks() -> dict:
    """The split stage's :data:`SPLIT_METRICS` ({} when absent or unreadable: the section is then left out)."""
    try:
        data = json.loads(SPLIT_METRICS.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def authors_section(leaks: dict) -> str:
    """What grouping by photographer prevented (authors, photos, crops that would have straddled splits) and
    its balance cost: each label's split fractions with and without it."""
    e = html.escape
    if not leaks.get("group_by_author"):
        return "<h2>Photographers</h2><p>Not grouped by photographer (split.group_by_author is off).</p>" \
            if leaks else ""
    p, gap, fractions = leaks["prevented"], leaks["largest_gap"], leaks["fractions"]
    rows = "".join(
        f"<tr><th>{e(label)}</th>"
        + "".join(f"<td>{fractions['grouped'][label][s]:.3f}</td>" for s in SPLITS)
        + "".join(f"<td>{fractions['photo_only'].get(label, {}).get(s, 0.0):.3f}</td>" for s in SPLITS) + "</tr>"
        for label in fractions["grouped"]
    )
    heads = "".join(f"<th>{s}</th>" for s in SPLITS)
    return f"""<h2>Photographers</h2>
<p>Grouping by photographer kept <strong>{p['authors_across_splits']}</strong> of {leaks['authors']} authors
({p['photos_across_splits']} photos, {p['crops_across_splits']} crops) from straddling splits;
{p['authors_in_train_and_test']} of them ({p['photos_in_train_and_test']} photos) would have been in train and
test both. Balance cost: the largest gap of a label's split fraction from the one asked for is
{gap['grouped']:.3f} grouped by photographer, {gap['photo_only']:.3f} grouped by photo only.</p>
<table><tr><th rowspan="2">label</th><th colspan="3">by photographer</th><th colspan="3">by photo only</th></tr>
<tr>{heads}{heads}</tr>{rows}</table>
"""


def render_html(
    balance: pd.DataFrame,
    splits: pd.DataFrame,
    rejected: pd.DataFrame,
    sheets: dict[tuple[str, str], str],
    reject_sections: list[tuple[str, str, pd.DataFrame]],
    leaks: dict | None = None,
) -> str:
    """The report page; every value from the data goes through :func:`html.escape`."""
    e = html.escape
    counts = balance.pivot(index="label", columns="split", values="count")
    lost = rejected["Label"].value_counts()
    summary_rows = "".join(
        f"<tr><th>{e(label)}</th>" + "".join(f"<td>{int(counts.loc[label, s])}</td>" for s in SPLITS)
        + f"<td>{int(counts.loc[label].sum())}</td><td>{int(lost.get(label, 0))}</td></tr>"
        for label in counts.index
    )
    label_parts = []
    for label in counts.index:
        label_parts.append(f"<h3>{e(label)}</h3>")
        for split in SPLITS:
            n = int(counts.loc[label, split])
            img = (f'<img src="{e(sheets[(label, split)])}" alt="{e(f"{label} {split} samples")}">'
                   if (label, split) in sheets else "<p>no crops</p>")
            shown = min(n, SAMPLES)
            label_parts.append(f"<h4>{split}: {n} crops (showing {shown})</h4>{img}")
    reject_parts = []
    for reason, name, rows in reject_sections:
        all_rows = rejected[rejected["reject_reason"] == reason]
        items = "".join(
            f"<tr><td>{i + 1}</td><td>{e(str(r.ImageID))}</td><td>{e(str(r.Label))}</td>"
            f"<td>{e(str(r.detail))}</td></tr>"
            for i, r in enumerate(rows.itertuples())
        )
        reject_parts.append(
            f"<h3>{e(reason)}: {len(all_rows)} crops from {all_rows['ImageID'].nunique()} photos</h3>"
            f'<img src="{e(name)}" alt="{e(reason)} samples">'
            f"<table><tr><th>#</th><th>ImageID</th><th>label</th><th>detail</th></tr>{items}</table>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Dataset report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 80em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
td {{ font-variant-numeric: tabular-nums; }}
img {{ max-width: 100%; display: block; }}
</style></head><body>
<h1>Dataset report</h1>
<p>{len(splits)} crops in the splits, {len(rejected)} rejected. Tiles: samples chosen by a hash of the
crop name; grey "undecodable" tiles are files that do not decode, dark "no file" tiles have nothing on disk.</p>
<h2>Counts</h2>
<table><tr><th>label</th>{"".join(f"<th>{s}</th>" for s in SPLITS)}<th>total</th><th>rejected</th></tr>
{summary_rows}</table>
<img src="class_balance.png" alt="class balance bar chart">
{authors_section(leaks or {})}<h2>Samples per label and split</h2>
{"".join(label_parts)}
<h2>Rejected, by reason</h2>
{"".join(reject_parts) or "<p>nothing rejected</p>"}
</body></html>
"""
