"""``python -m pipeline.fetch Hamburger Sandwich``: metadata + select + download in one command.

For people who want the pictures of some labels without setting up a DVC pipeline. It runs the same
stage code as ``dvc repro`` (``pipeline.metadata``, ``pipeline.select``, ``pipeline.download``) with the
settings of ``params.yaml`` in the current directory (defaults if there is none), overridden by the flags,
and writes ``data/`` under ``--out``. Re-running resumes: the metadata is cached, and only images not yet
answered are fetched. Exit code 0 when it finished (even if some photos are gone from Flickr), 2 for bad
input (an unknown label, a bad flag value), 1 when the work could not be done (server unreachable).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import chdir, contextmanager
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.errors import UserError, run_cli
from pipeline.params import PARAMS_FILE, load_params
from pipeline.sources import VERSIONS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.fetch",
        description="Download the Open Images boxes and photos of some labels: metadata, selection and "
                    "images in one command. Settings not given as flags come from ./params.yaml.",
        epilog="example: python -m pipeline.fetch Hamburger Sandwich --source cvdf --limit 200 --out burgers",
    )
    parser.add_argument("labels", nargs="+", metavar="LABEL",
                        help="display names (any case, e.g. 'Hamburger') or MIDs (e.g. /m/0cdn1)")
    parser.add_argument("--version", choices=VERSIONS, help="Open Images version (params: source.version)")
    parser.add_argument("--source", choices=("flickr", "cvdf"),
                        help="flickr: full-size originals, md5-checked; cvdf: resized copies (long side "
                             "<= 1024), never missing (params: source.images)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="at most N boxes per label, drawn with select.seed; 0 = all (params: select.limit_per_label)")
    parser.add_argument("--rate", type=float, metavar="R",
                        help="requests per second for all workers together; 0 = no limit (params: download.rate)")
    parser.add_argument("--workers", type=int, metavar="W", help="concurrent downloads (params: download.workers)")
    parser.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                        help="folder that receives data/ (metadata, selected.parquet, images); default: here")
    return parser.parse_args(argv)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """params.yaml keys set by the flags that were given."""
    flags = {"source.version": args.version, "source.images": args.source, "select.limit_per_label": args.limit,
             "download.rate": args.rate, "download.workers": args.workers}
    return {"labels": list(args.labels), **{key: value for key, value in flags.items() if value is not None}}


@contextmanager
def working_dir(folder: Path) -> Iterator[None]:
    """Run the stages inside ``folder``: their paths (``pipeline.paths``) are relative to the cwd."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {folder}: cannot create it ({exc.strerror})") from None
    with chdir(folder):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_params(PARAMS_FILE, overrides(args))
    from pipeline import metadata, select  # late: --help and bad flags answer at once
    from pipeline.download.stage import download, summary_table

    with working_dir(args.out):
        metadata.run(params.source.version, params.source.base_url, params.source.subsets, params.labels)
        counts = select.select(params.labels, params.select)
        print(select.format_counts(counts, params.select))
        manifest = download(params)
        print(summary_table(manifest))
    print(f"images: {args.out / paths.IMAGES_DIR}  manifest: {args.out / paths.IMAGES_MANIFEST}  "
          f"boxes: {args.out / paths.SELECTED}")
    return 0


def cli() -> int:
    """The ``openimages-fetch`` console script: errors as one line and an exit code, as with ``-m``."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
