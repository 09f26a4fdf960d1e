"""``python -m pipeline.stages.crop``: the flags; the work is :func:`pipeline.stages.crop.stage.run`."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.params import load_params
from pipeline.core.base.stages import run_stage

FLAGS = {"runtime.crop_processes": "--processes"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.crop",
        description="Cut each selected box out of its downloaded photo (upright by the Rotation column) "
                    f"into {paths.CROPS_DIR}/<label>/<ImageID>_<BoxIndex>.jpg, with {paths.CROPS_MANIFEST}. "
                    "Settings: the crop section of params.yaml.",
    )
    parser.add_argument("--processes", type=int, metavar="N",
                        help="worker processes (overrides runtime.crop_processes; 0 = one per usable core)")
    args = parser.parse_args(argv)
    overrides = None if args.processes is None else {"runtime.crop_processes": args.processes}
    params = load_params(overrides=overrides, flags=FLAGS)
    from pipeline.stages.crop.stage import run  # late: --help answers at once

    run_stage("crop", run, params)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
