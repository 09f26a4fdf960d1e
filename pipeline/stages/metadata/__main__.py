"""``python -m pipeline.stages.metadata``: the flags; the work is :func:`pipeline.stages.metadata.stage.run`."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.base.errors import run_cli
from pipeline.core.base.params import load_params
from pipeline.core.base.stages import run_stage


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m pipeline.stages.metadata",
        description="Download the Open Images metadata of source.version (params.yaml) into data/metadata/raw, "
        "resuming broken transfers, and convert it once to Parquet (data/metadata/boxes, images.parquet, "
        "classes.parquet, hierarchy.json).",
    ).parse_args(argv)
    params = load_params()
    from pipeline.stages.metadata.stage import run  # late: --help answers at once

    run_stage("metadata", run, params)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
