"""``python -m pipeline.stages.metadata``: the DVC stage metadata (see :mod:`pipeline.stages.metadata.stage`)."""
import sys

from pipeline.core.errors import run_cli
from pipeline.stages.metadata.stage import main

sys.exit(run_cli(main))
