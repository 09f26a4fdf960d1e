"""``python -m pipeline.stages.clean``: the flags; the work is :func:`pipeline.stages.clean.stage.run`."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.stage_cli import stage_main

DESCRIPTION = (f"Judge every crop in {paths.CROPS_MANIFEST}: keep it or give the reason it goes "
               "(placeholder, changed, corrupt, too small, duplicate, near duplicate). "
               f"Writes {paths.CLEAN_MANIFEST}. Settings: the clean section of params.yaml.")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("clean", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
