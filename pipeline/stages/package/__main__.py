"""``python -m pipeline.stages.package``: the flags; the work is :func:`pipeline.stages.package.stage.run`."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.base.errors import run_cli
from pipeline.core.base.stage_cli import stage_main

DESCRIPTION = ("Publish data/splits, the manifests, a README and ATTRIBUTION.csv as the quilt3 package "
               "NAME, and models/model.pt with its metrics and curves as NAME-model: pushed to package.registry "
               "(s3://bucket), or built into data/quilt-registry when it is empty. NAME is package.name, or "
               "openimages/<labels> when that is empty.")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("package", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
