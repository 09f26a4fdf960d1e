"""``python -m pipeline.stages.train``: fine-tune a CNN on ``data/splits`` (the DVC stage ``train``).

Writes ``models/model.pt`` (state dict + labels + preprocessing, safe to load), ``metrics/train.json``,
``dvclive/`` (per-epoch metrics and curves, written as each epoch ends, for ``dvc exp show`` and
``dvc plots``) and ``reports/train/curves.png``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core import paths
from pipeline.core.errors import run_cli
from pipeline.core.params import load_params
from pipeline.stages.train.live import epoch_logger
from pipeline.stages.train.stage import train, write_outputs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.train",
        description="Fine-tune a torchvision CNN on data/splits (params.yaml `train`): freeze, train the head, "
        "unfreeze, discriminative one-cycle. Writes models/model.pt, metrics/train.json, "
        "dvclive/ (per-epoch metrics and curves, as each epoch ends) and reports/train/curves.png.",
    )
    parser.parse_args(argv)
    params = load_params()
    with epoch_logger() as log_epoch:
        result = train(params.train, params.runtime, paths.SPLITS_DIR, log_epoch)
    write_outputs(result, params.train)
    m = result.metrics
    print(f"trained {m['arch']} on {m['train_images']} images ({m['device']}, {m['data']}): "
          f"val_accuracy {m['val_accuracy']:.3f} -> {paths.MODEL}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
