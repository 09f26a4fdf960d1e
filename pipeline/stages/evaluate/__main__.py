"""``python -m pipeline.stages.evaluate``: the flags; the work is :func:`pipeline.stages.evaluate.stage.run`."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.base.errors import run_cli
from pipeline.core.base.stage_cli import stage_main

DESCRIPTION = ("Evaluate models/model.pt on data/splits/test: top-1/top-k accuracy, per-class precision/"
               "recall/F1 and the most confused pairs (metrics/eval.json), confusion matrix (plots/confusion.csv, "
               "reports/evaluate/confusion.png), the most confident mistakes (worst.png), Grad-CAM maps (gradcam.png) "
               "and reports/evaluate/index.html.")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("evaluate", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
