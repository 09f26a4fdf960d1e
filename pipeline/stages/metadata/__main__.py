"""``python -m pipeline.stages.metadata``: the DVC stage metadata (see :mod:`pipeline.stages.metadata.stage`)."""
import sys

from pipeline.core.base.errors import run_cli
from pipeline.stages.metadata.stage import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
