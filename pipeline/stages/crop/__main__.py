import sys

from pipeline.core.base.errors import run_cli
from pipeline.stages.crop.stage import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
