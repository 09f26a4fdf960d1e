"""``python -m pipeline.stages.select``: the flags; the work is :func:`pipeline.stages.select.stage.run`."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.base.errors import run_cli
from pipeline.core.base.stage_cli import Flag, stage_main

DESCRIPTION = ("Select the boxes of the labels in params.yaml (or --labels) from the metadata cache "
               "into data/selected.parquet, applying the select.* rules of params.yaml.")
FLAGS = [Flag("--labels", "labels", nargs="+", metavar="LABEL",
              help="display names (any case) or MIDs, instead of params.yaml's labels")]


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("select", DESCRIPTION, argv, FLAGS)


if __name__ == "__main__":
    sys.exit(run_cli(main))
