"""``python -m pipeline.stages.shards``: the flags; the work is :func:`pipeline.stages.shards.stage.run`."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.stage_cli import stage_main

DESCRIPTION = (f"Write the splits in {paths.SPLITS_DIR} as WebDataset tar shards ({paths.SHARDS_DIR}/"
               "<split>-NNNNNN.tar: <key>.jpg, <key>.cls, <key>.json) and their index.json. Settings: the shards "
               "section of params.yaml (max_images, max_mb per shard).")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("shards", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
