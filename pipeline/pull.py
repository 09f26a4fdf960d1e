"""``python -m pipeline.pull NAME --registry s3://bucket [--hash H] --dest DIR``: get a dataset or model version.

How a colleague gets the data: by name and version, with nothing of the pipeline to run. The package stage
publishes two packages, and this pulls either: ``openimages/<labels>`` (the folder it makes is ready for
training: the package's shards are unpacked into class folders, so ``DIR/splits/train`` is an ImageFolder;
with the split tables, manifests, README and ATTRIBUTION.csv; ``--shards-only`` keeps the tars instead, for
streaming) and ``openimages/<labels>-model`` (``model.pt``, the metrics and curves, and the dataset's name
and top hash it was trained on). Every file is checked against the package's hashes before anything is
unpacked, and the tars are read as untrusted (:mod:`pipeline.core.learn.unpack`). ``--list`` shows the
versions (hash, date, message). S3 settings are AWS's own (docs/s3.md).

A local registry folder that was moved or copied still installs (objects are found by their content
hash); ``--relink`` rewrites its manifests once so that plain quilt3 reads it too. ``--diff A B`` says which
crops came or went between two versions, per label, and why (:mod:`pipeline.core.audit.diff`).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pipeline.core.audit.diff import READS, crop_changes, describe
from pipeline.core.base.errors import run_cli
from pipeline.core.base.paths import SPLIT_NAMES
from pipeline.core.learn.shard_index import INDEX_NAME
from pipeline.core.learn.unpack import Unpacked, unpack_shards
from pipeline.core.publish.registry import Registry, Version, check_hash, check_name, install, relink, versions


def format_versions(found: Sequence[Version]) -> list[str]:
    """One line per version, newest first: full hash (to paste into --hash), UTC date, message."""
    return [
        f"{v.top_hash}  {datetime.fromtimestamp(v.timestamp, UTC):%Y-%m-%d %H:%M:%S} UTC  "
        f"{'latest ' if v.latest else '       '}{v.message}"
        for v in found
    ]


def unpack_dataset(folder: Path) -> Unpacked | None:
    """A dataset package's shards (``folder/shards``) as class folders under ``folder/splits``, then the tars
    removed: the folders hold the same bytes. None for a package without shards (a model), or one whose class
    folders are entries already (a dataset version packaged before the crops travelled as shards alone: it
    carried both), left as installed."""
    shards = folder / "shards"
    if not (shards / INDEX_NAME).is_file() or any((folder / "splits" / split).is_dir() for split in SPLIT_NAMES):
        return None
    unpacked = unpack_shards(shards, folder / "splits")
    shutil.rmtree(shards)
    return unpacked


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.pull",
        description="Install a version of a dataset or model package into a folder, or list its versions.",
        epilog="Credentials and endpoint come from AWS's settings: AWS_PROFILE, ~/.aws, AWS_ENDPOINT_URL_S3 "
        "for MinIO and other S3-compatible stores (see docs/s3.md).",
    )
    parser.add_argument("name", nargs="?", help="package name, owner/dataset (owner/dataset-model for the model)")
    parser.add_argument("--registry", required=True, help="s3://bucket, or a local registry folder")
    parser.add_argument("--hash", dest="top_hash", help="top hash of the version, or a unique prefix (default: latest)")
    parser.add_argument("--dest", type=Path, help="new or empty folder to install into")
    parser.add_argument("--list", action="store_true", help="list the versions instead of installing one")
    parser.add_argument("--shards-only", action="store_true",
                        help="keep the dataset's WebDataset tars (shards/) instead of unpacking them into class "
                             "folders (for streaming them)")
    parser.add_argument("--relink", action="store_true",
                        help="rewrite a moved or copied local registry's manifests for where it is now, so plain "
                             "quilt3 reads it (no version changes)")
    parser.add_argument("--diff", nargs=2, metavar=("HASH_A", "HASH_B"),
                        help="say which crops came or went from version A to version B, per label, and why")
    args = parser.parse_args(argv)
    registry = Registry.parse(args.registry, "--registry")
    if args.relink:
        if args.name or args.dest or args.list or args.top_hash:
            parser.error("--relink takes only --registry")
        changed = relink(registry)
        print(f"relinked {changed} manifest(s) in {registry.shown}" if changed
              else f"{registry.shown}: every manifest already points here; nothing to do")
        return 0
    if not args.name:
        parser.error("give a package name (owner/dataset)")
    if args.diff:
        if args.list or args.dest or args.top_hash or args.shards_only:
            parser.error("--diff takes only NAME and --registry")
        return diff_versions(registry, check_name(args.name), *map(check_hash, args.diff))
    if args.list == (args.dest is not None):
        parser.error("give either --dest DIR or --list")
    if args.list and (args.top_hash or args.shards_only):
        parser.error("--list shows every version: leave out --hash and --shards-only")
    name = check_name(args.name)
    top_hash = check_hash(args.top_hash) if args.top_hash else None

    if args.list:
        print("\n".join(format_versions(versions(registry, name))))
        return 0
    unpacked: list[Unpacked] = []

    def finish(folder: Path) -> None:
        if (done := unpack_dataset(folder)) is not None:
            unpacked.append(done)

    installed = install(registry, name, top_hash, args.dest, finish=None if args.shards_only else finish)
    if installed.moved:
        print(f"note: {registry.shown} was moved or copied (its manifests point at its old place); pulled from "
              f"here anyway. For plain quilt3, run once: python -m pipeline.pull --registry {registry.shown} --relink",
              file=sys.stderr)
    print(f"installed {name}@{installed.top_hash} from {registry.shown} into {args.dest} ({installed.files} files)")
    for done in unpacked:
        print(f"unpacked {done.images} images from {done.shards} shards into class folders under "
              f"{args.dest / 'splits'} (the tars are not kept: --shards-only keeps them instead)")
    if (args.dest / "shards" / INDEX_NAME).is_file():
        print(f"stream the shards: {args.dest / 'shards'} (their index: {INDEX_NAME})")
    elif (args.dest / "splits" / "train").is_dir():
        print(f"train on it: torchvision.datasets.ImageFolder('{args.dest / 'splits' / 'train'}')")
    elif (args.dest / "model.pt").is_file():
        print(f"load it: pipeline.core.learn.models.load_checkpoint('{args.dest / 'model.pt'}')")
    return 0


def diff_versions(registry: Registry, name: str, old: str, new: str) -> int:
    """Install the tables a diff reads of both versions (every file checked; not the shards) into a temporary
    folder and print what changed."""
    with tempfile.TemporaryDirectory(prefix="pull-diff-") as tmp:
        folders = [Path(tmp) / "a", Path(tmp) / "b"]
        found = [install(registry, name, top_hash, folder, only=READS)
                 for top_hash, folder in zip((old, new), folders)]
        print(f"{name}: {found[0].top_hash[:12]} -> {found[1].top_hash[:12]}")
        print("\n".join(describe(crop_changes(*folders))))
    return 0


def cli() -> int:
    """Entry point of the ``openimages-pull`` console script."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
