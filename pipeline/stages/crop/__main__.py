"""``python -m pipeline.stages.crop``: the flags; the work is :func:`pipeline.stages.crop.stage.run`."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.stage_cli import Flag, stage_main

DESCRIPTION = ("Cut each selected box out of its downloaded photo (upright by the Rotation column) "
               f"into {paths.CROPS_DIR}/<label>/<ImageID>_<BoxIndex>.jpg, with {paths.CROPS_MANIFEST}. "
               "Settings: the crop section of params.yaml.")
FLAGS = [Flag("--processes", "runtime.crop_processes", metavar="N", type=int,
              help="worker processes (overrides runtime.crop_processes; 0 = one per usable core)")]


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("crop", DESCRIPTION, argv, FLAGS)


if __name__ == "__main__":
    sys.exit(run_cli(main))
