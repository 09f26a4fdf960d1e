"""``python -m pipeline.stages.split``: the flags; the work is :func:`pipeline.stages.split.stage.run`."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.params import load_params
from pipeline.core.base.stages import run_stage


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m pipeline.stages.split",
        description=f"Split the clean crops into leak-free, stratified train/val/test class folders "
        f"({paths.SPLITS_DIR}) and write the dataset report ({paths.DATASET_REPORT}/index.html). "
        "Settings: the split section of params.yaml.",
    ).parse_args(argv)
    params = load_params()
    from pipeline.stages.split.stage import run  # late: --help answers at once

    run_stage("split", run, params)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
