"""``python -m pipeline.stages.shards``: the flags; the work is :func:`pipeline.stages.shards.stage.run`."""
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
        prog="python -m pipeline.stages.shards",
        description=f"Write the splits in {paths.SPLITS_DIR} as WebDataset tar shards ({paths.SHARDS_DIR}/"
        "<split>-NNNNNN.tar: <key>.jpg, <key>.cls, <key>.json) and their index.json. Settings: the shards "
        "section of params.yaml (max_images, max_mb per shard).",
    ).parse_args(argv)
    params = load_params()
    from pipeline.stages.shards.stage import run  # late: --help answers at once

    run_stage("shards", run, params)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
