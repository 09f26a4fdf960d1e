"""``python -m pipeline.predict IMAGE...``: the label and probability of each image, from ``models/model.pt``.

One line per image, tab-separated: ``path  label  probability`` (then further label/probability pairs
with ``--top K``). Images get exactly the preprocessing the evaluate stage used, read from the model file.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.core import paths
from pipeline.core.errors import UserError, run_cli
from pipeline.core.learn.data import Normalize, decode
from pipeline.core.learn.device import infer, pick_device, to_device
from pipeline.core.learn.models import load_checkpoint

BATCH = 32


def predict(model_path: Path, images: Sequence[Path], top: int = 1,
            device_name: str = "auto") -> list[list[tuple[str, float]]]:
    """For each image, its ``top`` most likely labels with their probabilities, most likely first."""
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise UserError(f"no such image file: {', '.join(missing)}")
    model, info = load_checkpoint(model_path)
    device = pick_device(device_name)
    model = to_device(model, device)
    normalize = Normalize(info.mean, info.std, device)
    top = min(top, len(info.labels))
    results = []
    for start in range(0, len(images), BATCH):
        batch = torch.stack([decode(p, info.img_size) for p in images[start : start + BATCH]]).to(device)
        probs, ranks = infer(model, batch, device, normalize).softmax(1).topk(top, dim=1)
        results += [[(info.labels[r], p) for r, p in zip(row_r.tolist(), row_p.tolist())]
                    for row_r, row_p in zip(ranks.cpu(), probs.cpu())]
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Print the predicted label and its probability for each image (tab-separated).",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--model", type=Path, default=paths.MODEL, help=f"model file (default {paths.MODEL})")
    parser.add_argument("--top", type=int, default=1, help="also print the next most likely labels (default 1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    if args.top < 1:
        raise UserError("--top must be at least 1")
    for path, ranked in zip(args.images, predict(args.model, args.images, args.top, args.device), strict=True):
        print("\t".join([str(path), *(f"{label}\t{prob:.4f}" for label, prob in ranked)]))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
