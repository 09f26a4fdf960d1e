"""``python -m pipeline.stages.download``: the flags; the work is :func:`pipeline.stages.download.stage.run`."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.stage_cli import stage_main

DESCRIPTION = (f"Download every image of {paths.SELECTED} once into {paths.IMAGES_DIR}/<ImageID>.<ext>, "
               f"with {paths.IMAGES_MANIFEST} recording each one's status. Settings: params.yaml "
               "(source.images, source.cvdf_url, download.*). Safe to interrupt: a re-run fetches only "
               "what is missing.")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("download", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
