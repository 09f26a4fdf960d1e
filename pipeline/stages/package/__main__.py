"""``python -m pipeline.stages.package``: the DVC stage package (see :mod:`pipeline.stages.package.stage`)."""
import sys

from pipeline.core.base.errors import run_cli
from pipeline.stages.package.stage import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
