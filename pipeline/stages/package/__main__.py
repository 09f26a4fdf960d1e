"""``python -m pipeline.stages.package``: the flags; the work is :func:`pipeline.stages.package.stage.run`."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.base.errors import run_cli
from pipeline.core.base.params import load_params
from pipeline.core.base.stages import run_stage


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m pipeline.stages.package",
        description="Publish data/splits, the manifests, a README and ATTRIBUTION.csv as the quilt3 package "
        "NAME, and models/model.pt with its metrics and curves as NAME-model: pushed to package.registry "
        "(s3://bucket), or built into data/quilt-registry when it is empty. NAME is package.name, or "
        "openimages/<labels> when that is empty.",
    ).parse_args(argv)
    params = load_params()
    from pipeline.stages.package.stage import run  # late: --help answers at once

    run_stage("package", run, params)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
