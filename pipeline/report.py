"""``python -m pipeline.report``: write the dataset report again from the manifests, without re-splitting.

The split stage writes it on every run; this command is for after editing the report's code, or for a
workspace pulled from DVC's cache without ``reports/``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.stages.split.report import build_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report",
        description=f"Write the dataset report ({paths.DATASET_REPORT}/index.html, PNG contact sheets, "
        f"{paths.CLASS_BALANCE}) from the split, clean and download manifests. The split stage runs this itself.",
    )
    parser.parse_args(argv)
    print(f"report: {build_report()}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
