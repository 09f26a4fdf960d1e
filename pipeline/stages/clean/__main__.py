"""``python -m pipeline.stages.clean``: the flags; the work is :func:`pipeline.stages.clean.stage.run`."""
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
        prog="python -m pipeline.stages.clean",
        description=f"Judge every crop in {paths.CROPS_MANIFEST}: keep it or give the reason it goes "
                    "(placeholder, changed, corrupt, too small, duplicate, near duplicate). "
                    f"Writes {paths.CLEAN_MANIFEST}. Settings: the clean section of params.yaml.",
    ).parse_args(argv)
    params = load_params()
    from pipeline.stages.clean.stage import run  # late: --help answers at once

    run_stage("clean", run, params)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
