"""``python -m pipeline.stages.split``: the DVC stage split (see :mod:`pipeline.stages.split.stage`)."""
import sys

from pipeline.core.base.errors import run_cli
from pipeline.stages.split.stage import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
