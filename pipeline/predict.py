"""``python -m pipeline.predict PATH...``: the label and probability of each image, from ``models/model.pt``.

PATH is an image file or a folder, searched recursively for image files (others, and images that cannot be
read, are skipped and counted). A folder whose subfolders are named after the model's labels is a labelled
set (a user's own photos sorted by hand): its accuracy is printed and every prediction goes to a CSV.
Output: one line per image, ``path<TAB>label<TAB>probability`` (more pairs with ``--top K``), quoted as in
CSV where a name needs it; summaries go to stderr, so stdout holds only the predictions. Images get exactly
the preprocessing the evaluate stage used, read from the model file. The details: docs/architecture.md
("train / evaluate / predict").
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.core.base import paths
from pipeline.core.base.errors import UserError, run_cli
from pipeline.core.base.io import write_csv
from pipeline.core.base.progress import Progress
from pipeline.core.base.safe import printable
from pipeline.core.learn.data import Normalize, decode
from pipeline.core.learn.device import infer, pick_device, to_device
from pipeline.core.learn.models import ModelInfo, load_checkpoint

BATCH = 32
DEFAULT_CSV = Path("predictions.csv")
CSV_COLUMNS = ("path", "actual", "predicted", "probability", "correct")


@dataclass
class Inputs:
    """The images to predict, in order; for those under a labelled folder, the class the folder names."""

    images: list[Path] = field(default_factory=list)
    actual: dict[Path, int] = field(default_factory=dict)
    skipped: int = 0           # files in the folders that are not images
    labelled: list[Path] = field(default_factory=list)  # the folders scored against their subfolders' names


def label_index(info: ModelInfo) -> dict[str, int]:
    """Folder name -> class: the label or its split folder name, in any case."""
    names = {}
    for i, (label, dirname) in enumerate(zip(info.labels, info.dirnames, strict=True)):
        names[label.casefold()] = names[dirname.casefold()] = i
    return names


def gather(targets: Sequence[Path], info: ModelInfo) -> Inputs:
    """Expand files and folders into images; a named file must exist, a folder is searched recursively."""
    missing = [str(p) for p in targets if not p.exists()]
    if missing:
        raise UserError(f"no such image file or folder: {', '.join(missing)}")
    names, found = label_index(info), Inputs()
    for target in targets:
        if not target.is_dir():
            found.images.append(target)
            continue
        subfolders = [d for d in sorted(target.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        if any(d.name.casefold() in names for d in subfolders):
            found.labelled.append(target)
        for root, dirs, files in os.walk(target):  # symlinked folders are not followed: no loops
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(root) / name
                if path.suffix.lower() not in paths.IMAGE_SUFFIXES or not path.is_file():
                    found.skipped += 1
                    continue
                found.images.append(path)
                top = path.relative_to(target).parts[0]
                if target in found.labelled and top.casefold() in names and path.parent != target:
                    found.actual[path] = names[top.casefold()]
    return found


def predict(model_path: Path, images: Sequence[Path], top: int = 1, device_name: str = "auto",
            unreadable_ok: frozenset[Path] = frozenset()) -> list[list[tuple[str, float]] | None]:
    """For each image, its ``top`` most likely labels with their probabilities, most likely first.

    An image in ``unreadable_ok`` that cannot be decoded gets None; any other is a :class:`UserError`.
    """
    return predict_with(*load_checkpoint(model_path), images, top, device_name, unreadable_ok)


def predict_with(model: torch.nn.Module, info: ModelInfo, images: Sequence[Path], top: int = 1,
                 device_name: str = "auto",
                 unreadable_ok: frozenset[Path] = frozenset()) -> list[list[tuple[str, float]] | None]:
    """:func:`predict` with a model already loaded."""
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise UserError(f"no such image file: {', '.join(missing)}")
    device = pick_device(device_name)
    model = to_device(model, device)
    normalize = Normalize(info.mean, info.std, device)
    top = min(top, len(info.labels))
    results: list[list[tuple[str, float]] | None] = []
    with Progress(len(images), "predict", "img", leave=False) as bar:
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH]
            decoded = [_decode(p, info.img_size, p in unreadable_ok) for p in chunk]
            readable = [t for t in decoded if t is not None]
            rows: list[list[tuple[str, float]]] = []
            if readable:
                probs, ranks = infer(model, torch.stack(readable).to(device), device, normalize).softmax(1).topk(top, dim=1)
                rows = [[(info.labels[r], p) for r, p in zip(row_r.tolist(), row_p.tolist())]
                        for row_r, row_p in zip(ranks.cpu(), probs.cpu())]
            it = iter(rows)
            results += [next(it) if t is not None else None for t in decoded]
            bar.update(len(chunk))
    return results


def tsv_field(text: str) -> str:
    """``text`` as one field of a tab-separated line: quoted as CSV quotes (quotes doubled) when it holds a
    tab, a line break or a quote. (Python's csv writer with a ``\\n`` line end leaves a lone ``\\r`` bare.)"""
    text = printable(text)
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in '\t\r\n"') else text


def _decode(path: Path, size: int, unreadable_ok: bool) -> torch.Tensor | None:
    try:
        return decode(path, size)
    except UserError:
        if unreadable_ok:
            return None
        raise


def csv_target(given: Path | None, found: Inputs) -> Path | None:
    """Where the predictions' CSV goes (``--csv``, or the default when a labelled folder is scored), refused
    before any image is scored when it is a folder."""
    target = given or (DEFAULT_CSV if found.labelled else None)
    if target is not None and target.is_dir():
        raise UserError(f"--csv {target}: is a folder; give the name of the CSV file to write")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Print the predicted label and its probability for each image (tab-separated; names with "
        "tabs, newlines or quotes are quoted). PATH is an image or a folder (searched recursively); a folder "
        "whose subfolders are label names is scored against them: accuracy on stderr, predictions in --csv.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--model", type=Path, default=paths.MODEL, help=f"model file (default {paths.MODEL})")
    parser.add_argument("--top", type=int, default=1, help="also print the next most likely labels (default 1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--csv", type=Path, help=f"write every prediction here (default {DEFAULT_CSV} when a "
                        "labelled folder is given)")
    args = parser.parse_args(argv)
    if args.top < 1:
        raise UserError("--top must be at least 1")
    model, info = load_checkpoint(args.model)
    found = gather(args.paths, info)
    if not found.images:
        raise UserError(f"no image files ({', '.join(paths.IMAGE_SUFFIXES)}) in {', '.join(map(str, args.paths))}")
    csv_path = csv_target(args.csv, found)
    in_folders = frozenset(p for p in found.images if p not in args.paths)
    ranked = predict_with(model, info, found.images, args.top, args.device, unreadable_ok=in_folders)
    rows = []
    for path, result in zip(found.images, ranked, strict=True):
        if result is None:
            continue
        fields = [str(path), *(v for label, prob in result for v in (label, f"{prob:.4f}"))]
        print("\t".join(map(tsv_field, fields)))
        actual = info.labels[found.actual[path]] if path in found.actual else ""
        rows.append((printable(str(path)), actual, result[0][0], f"{result[0][1]:.4f}",
                     "" if not actual else str(actual == result[0][0]).lower()))
    sys.stdout.flush()
    unreadable = sum(r is None for r in ranked)
    if found.skipped or unreadable:
        print(f"skipped {found.skipped} file(s) that are not images and {unreadable} unreadable image(s)",
              file=sys.stderr)
    scored = [r for r in rows if r[1]]
    if scored:
        right = sum(r[4] == "true" for r in scored)
        print(f"accuracy {right / len(scored):.4f} ({right}/{len(scored)}) against the label folders of "
              f"{', '.join(map(str, found.labelled))}", file=sys.stderr)
    if csv_path is not None:
        try:
            write_csv(csv_path, CSV_COLUMNS, rows)
        except OSError as exc:
            raise UserError(f"--csv {csv_path}: cannot write it ({exc.strerror or exc})") from None
        print(f"predictions -> {csv_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
