"""``python -m pipeline.stages.evaluate``: the flags; the work is :func:`pipeline.stages.evaluate.stage.run`."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.base.errors import run_cli
from pipeline.core.base.params import load_params
from pipeline.core.base.stages import run_stage


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m pipeline.stages.evaluate",
        description="Evaluate models/model.pt on data/splits/test: top-1/top-k accuracy, per-class precision/"
        "recall/F1 and the most confused pairs (metrics/eval.json), confusion matrix (plots/confusion.csv, "
        "reports/evaluate/confusion.png), the most confident mistakes (worst.png), Grad-CAM maps (gradcam.png) "
        "and reports/evaluate/index.html.",
    ).parse_args(argv)
    params = load_params()
    from pipeline.stages.evaluate.stage import run  # late: --help answers at once

    run_stage("evaluate", run, params)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
