"""``python -m pipeline.stages.metadata``: the flags; the work is :func:`pipeline.stages.metadata.stage.run`."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.base.errors import run_cli
from pipeline.core.base.stage_cli import stage_main

DESCRIPTION = ("Download the Open Images metadata of source.version (params.yaml) into data/metadata/raw, "
               "resuming broken transfers, and convert it once to Parquet (data/metadata/boxes, images.parquet, "
               "classes.parquet, hierarchy.json).")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("metadata", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
