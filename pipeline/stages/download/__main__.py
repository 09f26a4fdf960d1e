"""``python -m pipeline.stages.download``: the DVC stage (reads params.yaml and data/selected.parquet)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.params import load_params


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m pipeline.stages.download",
        description=f"Download every image of {paths.SELECTED} once into {paths.IMAGES_DIR}/<ImageID>.<ext>, "
                    f"with {paths.IMAGES_MANIFEST} recording each one's status. Settings: params.yaml "
                    "(source.images, source.cvdf_url, download.*). Safe to interrupt: a re-run fetches only "
                    "what is missing.",
    ).parse_args(argv)
    from pipeline.stages.download.stage import download, summary_table  # late: --help stays fast

    manifest = download(load_params())
    print(summary_table(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
