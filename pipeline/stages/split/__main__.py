"""``python -m pipeline.stages.split``: the flags; the work is :func:`pipeline.stages.split.stage.run`."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.stage_cli import stage_main

DESCRIPTION = (f"Split the clean crops into leak-free, stratified train/val/test class folders "
               f"({paths.SPLITS_DIR}) and write the dataset report ({paths.DATASET_REPORT}/index.html). "
               "Settings: the split section of params.yaml.")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("split", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
