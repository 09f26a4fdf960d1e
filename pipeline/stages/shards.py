"""``python -m pipeline.stages.shards``: the splits as WebDataset tar shards (the DVC stage ``shards``).

Why: large-scale training reads tar shards (one long sequential read per few hundred images instead of one
open per image), img2dataset writes them, and people who pull a dataset expect it in that form too. The
train stage streams from them when its decoded cache does not fit; the package carries them.

Layout, index and the writer (webdataset's ``ShardWriter``, with fixed mtimes, owners and order, so the
same splits give byte-identical shards): :mod:`pipeline.core.learn.shards`, shared with the benchmark.
Each split's images go, in path order, into ``data/shards/<split>-NNNNNN.tar``, a new shard after
``shards.max_images`` images or once one holds ``shards.max_mb`` MiB; ``index.json`` records each tar's size
and sha256, which training checks before it streams. Two files whose sample keys collide stop the stage
with a line naming both (renaming one is the fix; running the stage again would not be).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.io import replace_dir, write_json
from pipeline.core.base.locks import stage_lock
from pipeline.core.learn.data import read_classes, read_split
from pipeline.core.learn.shards import INDEX_NAME, ShardIndex, write_split_shards
from pipeline.core.base.params import ShardsParams, load_params


def write_shards(splits_dir: Path, out: Path, params: ShardsParams) -> ShardIndex:
    """Every split of ``splits_dir`` that has a folder, as shards in ``out`` (empty), and their index."""
    classes = read_classes(splits_dir)
    splits = {
        name: write_split_shards(read_split(splits_dir, name, classes), splits_dir, classes, out,
                                 params.max_images, params.max_mb * 2**20)
        for name in paths.SPLIT_NAMES if (splits_dir / name).is_dir()
    }
    index = ShardIndex(classes.dirnames, classes.labels, splits)
    write_json(out / INDEX_NAME, index.to_json())
    return index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.shards",
        description=f"Write the splits in {paths.SPLITS_DIR} as WebDataset tar shards ({paths.SHARDS_DIR}/"
        "<split>-NNNNNN.tar: <key>.jpg, <key>.cls, <key>.json) and their index.json. Settings: the shards "
        "section of params.yaml (max_images, max_mb per shard).",
    )
    parser.parse_args(argv)
    params = load_params()
    with stage_lock("shards"), replace_dir(paths.SHARDS_DIR) as folder:
        index = write_shards(paths.SPLITS_DIR, folder, params.shards)
    parts = [f"{name} {len(s.files)} ({s.images} images, {sum(s.sizes) / 2**20:.1f} MiB)"
             for name, s in index.splits.items()]
    print(f"shards: {', '.join(parts)} -> {paths.SHARDS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
