"""``python -m pipeline.pull NAME --registry s3://bucket [--hash H] --dest DIR``: get a dataset version.

How a colleague gets the data: by name and version, with nothing of the pipeline to run. The folder it
makes is ready for training (``DIR/splits/train`` is an ImageFolder) and holds the manifests, metrics,
README and ATTRIBUTION.csv of that version; every file is checked against the package's hashes.
``--list`` shows the versions (hash, date, message). S3 settings are AWS's own (docs/s3.md).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from pipeline.core.errors import run_cli
from pipeline.core.registry import Registry, Version, check_hash, check_name, install, versions


def format_versions(found: Sequence[Version]) -> list[str]:
    """One line per version, newest first: full hash (to paste into --hash), UTC date, message."""
    return [
        f"{v.top_hash}  {datetime.fromtimestamp(v.timestamp, timezone.utc):%Y-%m-%d %H:%M:%S} UTC  "
        f"{'latest ' if v.latest else '       '}{v.message}"
        for v in found
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.pull",
        description="Install a version of a dataset package into a folder, or list its versions.",
        epilog="Credentials and endpoint come from AWS's settings: AWS_PROFILE, ~/.aws, AWS_ENDPOINT_URL_S3 "
        "for MinIO and other S3-compatible stores (see docs/s3.md).",
    )
    parser.add_argument("name", help="package name, owner/dataset")
    parser.add_argument("--registry", required=True, help="s3://bucket, or a local registry folder")
    parser.add_argument("--hash", dest="top_hash", help="top hash of the version, or a unique prefix (default: latest)")
    parser.add_argument("--dest", type=Path, help="new or empty folder to install into")
    parser.add_argument("--list", action="store_true", help="list the versions instead of installing one")
    args = parser.parse_args(argv)
    if args.list == (args.dest is not None):
        parser.error("give either --dest DIR or --list")
    if args.list and args.top_hash:
        parser.error("--list shows every version: leave out --hash")
    name = check_name(args.name)
    registry = Registry.parse(args.registry, "--registry")
    top_hash = check_hash(args.top_hash) if args.top_hash else None

    if args.list:
        print("\n".join(format_versions(versions(registry, name))))
        return 0
    top_hash, count = install(registry, name, top_hash, args.dest)
    print(f"installed {name}@{top_hash} from {registry.shown} into {args.dest} ({count} files)")
    print(f"train on it: torchvision.datasets.ImageFolder('{args.dest / 'splits' / 'train'}')")
    return 0


def cli() -> int:
    """Entry point of the ``openimages-pull`` console script."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
