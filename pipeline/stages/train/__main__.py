"""``python -m pipeline.stages.train``: fine-tune a CNN on ``data/splits`` (the DVC stage ``train``).

Writes ``models/model.pt`` (the best epoch's state dict + labels + preprocessing, safe to load),
``metrics/train.json`` (which epoch that was), ``dvclive/`` (per-epoch metrics and curves, written as each
epoch ends, for ``dvc exp show`` and ``dvc plots``), ``reports/train/curves.png`` and
``reports/train/batch.png`` (a training batch after augmentation).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.locks import stage_lock
from pipeline.core.base.params import load_params
from pipeline.stages.train.live import epoch_logger
from pipeline.stages.train.stage import train, write_outputs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.train",
        description="Fine-tune a torchvision CNN on data/splits (params.yaml `train`): freeze, train the head, "
        "unfreeze, discriminative one-cycle; keeps the epoch with the best validation accuracy. Writes "
        "models/model.pt, metrics/train.json, dvclive/ (per-epoch metrics and curves, as each epoch ends), "
        "reports/train/curves.png and batch.png.",
    )
    parser.parse_args(argv)
    params = load_params()
    with stage_lock("train"), epoch_logger() as log_epoch:
        result = train(params.train, params.runtime, paths.SPLITS_DIR, paths.SHARDS_DIR, log_epoch)
        write_outputs(result, params.train)
    m = result.metrics
    print(f"trained {m['arch']} on {m['train_images']} images ({m['device']}, {m['data']}): "
          f"val_accuracy {m['val_accuracy']:.3f} (epoch {m['best_epoch']} of {m['epochs']}) -> {paths.MODEL}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
