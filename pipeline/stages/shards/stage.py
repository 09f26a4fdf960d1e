"""The shards stage: the splits as WebDataset tar shards, for streaming training and for sharing.

Each split's images go, in path order, into ``data/shards/<split>-NNNNNN.tar``, a new shard after
``shards.max_images`` images or once one holds ``shards.max_mb`` MiB (:mod:`.write`); ``index.json``
(:mod:`pipeline.core.learn.shard_index`) records each tar's size and sha256, which training checks before
it streams. Why tars, and the layout: docs/architecture.md. No torch is imported here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core.base import paths
from pipeline.core.base.io import replace_dir, write_json
from pipeline.core.base.params import Params, ShardsParams
from pipeline.core.base.stages import Summary
from pipeline.core.learn.folders import read_classes, read_split
from pipeline.core.learn.shard_index import INDEX_NAME, ShardIndex
from pipeline.stages.shards.write import write_split_shards


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


@dataclass(frozen=True)
class ShardsSummary(Summary):
    """The index of the shards written."""

    index: ShardIndex

    def lines(self) -> list[str]:
        parts = [f"{name} {len(s.files)} ({s.images} images, {sum(s.sizes) / 2**20:.1f} MiB)"
                 for name, s in self.index.splits.items()]
        return [f"shards: {', '.join(parts)} -> {paths.SHARDS_DIR}"]


def run(params: Params) -> ShardsSummary:
    """The stage: ``data/splits`` as shards in ``data/shards`` (rebuilt whole)."""
    with replace_dir(paths.SHARDS_DIR) as folder:
        return ShardsSummary(write_shards(paths.SPLITS_DIR, folder, params.shards))
