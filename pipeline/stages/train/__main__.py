"""``python -m pipeline.stages.train``: the flags; the work is :func:`pipeline.stages.train.stage.run`."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.base.errors import run_cli
from pipeline.core.base.stage_cli import stage_main

DESCRIPTION = ("Fine-tune a torchvision CNN on data/splits (params.yaml `train`): freeze, train the head, "
               "unfreeze, discriminative one-cycle; keeps the epoch with the best validation accuracy. Writes "
               "models/model.pt, metrics/train.json, dvclive/ (per-epoch metrics and curves, as each epoch ends), "
               "reports/train/curves.png and batch.png.")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("train", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
