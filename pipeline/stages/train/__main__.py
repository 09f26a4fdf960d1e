"""``python -m pipeline.stages.train``: fine-tune a CNN on ``data/splits`` (the DVC stage ``train``).

Writes ``models/model.pt`` (the best epoch's state dict + labels + preprocessing, safe to load),
``metrics/train.json`` (which epoch that was), ``plots/train_curves.csv`` (one row per epoch, for ``dvc plots``),
``reports/train/curves.png`` and ``reports/train/batch.png`` (a training batch after augmentation).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core import paths
from pipeline.core.errors import run_cli
from pipeline.core.params import load_params
from pipeline.stages.train.stage import train, write_outputs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.train",
        description="Fine-tune a torchvision CNN on data/splits (params.yaml `train`): freeze, train the head, "
        "unfreeze, discriminative one-cycle; keeps the epoch with the best validation accuracy. Writes "
        "models/model.pt, metrics/train.json, plots/train_curves.csv, reports/train/curves.png and batch.png.",
    )
    parser.parse_args(argv)
    params = load_params()
    result = train(params.train, params.runtime, paths.SPLITS_DIR, paths.SHARDS_DIR)
    write_outputs(result, params.train)
    m = result.metrics
    print(f"trained {m['arch']} on {m['train_images']} images ({m['device']}, {m['data']}): "
          f"val_accuracy {m['val_accuracy']:.3f} (epoch {m['best_epoch']} of {m['epochs']}) -> {paths.MODEL}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
