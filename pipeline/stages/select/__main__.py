"""``python -m pipeline.stages.select``: the flags; the work is :func:`pipeline.stages.select.stage.run`."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.base.errors import run_cli
from pipeline.core.base.params import load_params
from pipeline.core.base.stages import run_stage


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.select",
        description="Select the boxes of the labels in params.yaml (or --labels) from the metadata cache "
        "into data/selected.parquet, applying the select.* rules of params.yaml.",
    )
    parser.add_argument("--labels", nargs="+", metavar="LABEL",
                        help="display names (any case) or MIDs, instead of params.yaml's labels")
    args = parser.parse_args(argv)
    params = load_params(overrides={"labels": args.labels} if args.labels else None)
    from pipeline.stages.select.stage import run  # late: --help answers at once

    run_stage("select", run, params)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
