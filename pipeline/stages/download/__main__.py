"""``python -m pipeline.stages.download``: the flags; the work is :func:`pipeline.stages.download.stage.run`."""
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
        prog="python -m pipeline.stages.download",
        description=f"Download every image of {paths.SELECTED} once into {paths.IMAGES_DIR}/<ImageID>.<ext>, "
                    f"with {paths.IMAGES_MANIFEST} recording each one's status. Settings: params.yaml "
                    "(source.images, source.cvdf_url, download.*). Safe to interrupt: a re-run fetches only "
                    "what is missing.",
    ).parse_args(argv)
    params = load_params()
    from pipeline.stages.download.stage import run  # late: --help answers at once

    run_stage("download", run, params)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
