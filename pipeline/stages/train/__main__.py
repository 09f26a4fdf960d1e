"""``python -m pipeline.stages.train``: the flags; the work is :func:`pipeline.stages.train.stage.run`."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.base.errors import run_cli
from pipeline.core.base.params import load_params
from pipeline.core.base.stages import run_stage


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m pipeline.stages.train",
        description="Fine-tune a torchvision CNN on data/splits (params.yaml `train`): freeze, train the head, "
        "unfreeze, discriminative one-cycle; keeps the epoch with the best validation accuracy. Writes "
        "models/model.pt, metrics/train.json, dvclive/ (per-epoch metrics and curves, as each epoch ends), "
        "reports/train/curves.png and batch.png.",
    ).parse_args(argv)
    params = load_params()
    from pipeline.stages.train.stage import run  # late: --help answers at once

    run_stage("train", run, params)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
