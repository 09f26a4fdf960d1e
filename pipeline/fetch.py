"""``python -m pipeline.fetch Hamburger Sandwich``: metadata + select + download in one command, in any folder.

For people who want the pictures of some labels without setting up a DVC pipeline. It runs the same stage
code as ``dvc repro`` (the metadata, select and download stages) with the settings of ``./params.yaml`` when
there is one and the built-in defaults when there is not, overridden by the flags, and writes ``data/``
under ``--out``. Re-running resumes: the metadata is cached, and only images not yet answered are fetched.
Exit code 0 when it finished (even if some photos are gone from Flickr), 2 for bad input (an unknown label,
a bad flag value: the message names the flag), 1 when the work could not be done (server unreachable).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import chdir, contextmanager
from pathlib import Path
from typing import Any

from pipeline.core.base import paths
from pipeline.core.base.errors import UserError, run_cli
from pipeline.core.base.params import IMAGE_SOURCES, PARAMS_FILE, VERSIONS, load_params

#: params key -> the flag that sets it (errors about a value name the flag the user typed)
FLAGS = {
    "source.version": "--version", "source.images": "--source", "source.base_url": "--base-url",
    "source.cvdf_url": "--cvdf-url", "select.limit_per_label": "--limit", "download.rate": "--rate",
    "runtime.connections": "--connections", "runtime.download_processes": "--processes",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.fetch",
        description="Download the Open Images boxes and photos of some labels: metadata, selection and images "
                    "in one command, into --out. Settings not given as flags come from ./params.yaml when there "
                    "is one, else from the built-in defaults (the real Open Images, Flickr originals, 1 request/s).",
        epilog="examples: python -m pipeline.fetch Hamburger Sandwich --source cvdf --limit 200 --out burgers; "
               "against a local mirror: --base-url http://127.0.0.1:8754/openimages --cvdf-url http://127.0.0.1:8754/cvdf",
    )
    parser.add_argument("labels", nargs="+", metavar="LABEL",
                        help="display names (any case, e.g. 'Hamburger') or MIDs (e.g. /m/0cdn1)")
    parser.add_argument("--version", choices=VERSIONS, help="Open Images version (params: source.version)")
    parser.add_argument("--source", choices=IMAGE_SOURCES,
                        help="flickr: full-size originals, md5-checked; cvdf: resized copies (long side "
                             "<= 1024), never missing (params: source.images)")
    parser.add_argument("--base-url", metavar="URL", help="where the metadata files are (params: source.base_url)")
    parser.add_argument("--cvdf-url", metavar="URL", help="where the resized copies are (params: source.cvdf_url)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="at most N boxes per label, drawn with select.seed; 0 = all (params: select.limit_per_label)")
    parser.add_argument("--rate", type=float, metavar="R",
                        help="requests per second for all downloads together; 0 = no limit (params: download.rate)")
    parser.add_argument("--connections", type=int, metavar="N",
                        help="concurrent downloads per process (params: runtime.connections)")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="download processes sharing the rate; 0 = one per core (params: runtime.download_processes)")
    parser.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                        help="folder that receives data/ (metadata, selected.parquet, images); default: here")
    return parser.parse_args(argv)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """params.yaml keys set by the flags that were given."""
    given = {key: getattr(args, flag.lstrip("-").replace("-", "_")) for key, flag in FLAGS.items()}
    return {"labels": list(args.labels), **{key: value for key, value in given.items() if value is not None}}


@contextmanager
def working_dir(folder: Path) -> Iterator[None]:
    """Run the stages inside ``folder``: their paths (``pipeline.core.base.paths``) are relative to the cwd."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {folder}: cannot create it ({exc.strerror})") from None
    with chdir(folder):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_params(PARAMS_FILE, overrides(args), flags=FLAGS)
    from pipeline.stages import select  # late: --help and bad flags answer at once
    from pipeline.stages.download.stage import download, summary_table
    from pipeline.stages.metadata import stage as metadata

    with working_dir(args.out):
        metadata.run(params)
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
