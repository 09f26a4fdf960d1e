"""The download stage: selection -> distinct images -> shards -> ``data/images`` + manifest.

Each ImageID is fetched once however many of its boxes were selected. A re-run (after success, a crash
or ``kill -9``) skips every image whose answer is already recorded and fetches only the rest.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from pipeline import paths
from pipeline.download import shards
from pipeline.download.ratelimit import RateLimiter
from pipeline.download.runner import run_shard
from pipeline.download.writer import sweep_temporaries
from pipeline.errors import PipelineFailure, UserError
from pipeline.manifest import read_parquet
from pipeline.params import Params, SourceParams
from pipeline.safe import is_image_id
from pipeline.sources import SUBSETS, join_url

#: columns of ``data/selected.parquet`` this stage reads
NEEDED = ("ImageID", "Subset", "OriginalURL", "OriginalSize", "OriginalMD5")


def images_table(selected: pd.DataFrame, source: SourceParams) -> tuple[pd.DataFrame, int]:
    """One row per distinct valid ImageID: ``ImageID Subset url OriginalSize OriginalMD5``, and how many
    distinct ImageIDs were dropped as invalid (they cannot name a file safely).

    ``flickr``: the original at OriginalURL, checked against OriginalSize/OriginalMD5. ``cvdf``: the
    resized copy at ``cvdf_url/<Subset>/<ImageID>.jpg``, which no size or md5 in the tables describes.
    """
    missing = [c for c in NEEDED if c not in selected.columns]
    if missing:
        raise UserError(f"{paths.SELECTED}: missing column(s) {', '.join(missing)}; re-run the select stage")
    images = selected.drop_duplicates("ImageID")[list(NEEDED)].reset_index(drop=True)
    valid = images["ImageID"].map(is_image_id)
    dropped = int((~valid).sum())
    images = images[valid].reset_index(drop=True)
    if source.images == "flickr":
        images["url"] = images["OriginalURL"].where(images["OriginalURL"].map(lambda u: isinstance(u, str)), "")
    else:
        images["url"] = [join_url(source.cvdf_url, f"{subset}/{image_id}.jpg") if subset in SUBSETS else ""
                         for image_id, subset in zip(images["ImageID"], images["Subset"])]
        images["OriginalSize"] = None
        images["OriginalMD5"] = None
    return images[["ImageID", "Subset", "url", "OriginalSize", "OriginalMD5"]], dropped


def download(params: Params, selected: Path = paths.SELECTED, images_dir: Path = paths.IMAGES_DIR,
             progress: bool = True) -> pd.DataFrame:
    """Run the stage and return the manifest (also written to ``images_dir/manifest.parquet``).

    Raises :class:`PipelineFailure` when every request of this run ended ``failed`` (the server is
    unreachable, say), after writing the manifest: a run that merely found some photos gone is a success.
    """
    images, dropped = images_table(read_parquet(selected, "selection"), params.source)
    if dropped:
        print(f"warning: skipped {dropped} image(s) whose ImageID is not 16 hex digits", file=sys.stderr)
    shards_dir = images_dir / "shards"
    try:
        shards_dir.mkdir(parents=True, exist_ok=True)
        swept = sweep_temporaries(images_dir) + sweep_temporaries(shards_dir)
        if swept:
            print(f"removed {swept} partial file(s) left by an interrupted run", file=sys.stderr)
        known = shards.load_records(shards_dir)
        plan = [(shard, *_split_done(shard, known, images_dir))
                for shard in shards.plan_shards(images, params.download.shard_size)]
        parts, tried = _run(plan, params, images_dir, shards_dir, progress)
        manifest = shards.finish(shards_dir, parts, images_dir / paths.IMAGES_MANIFEST.name)
    except OSError as exc:
        raise PipelineFailure(f"cannot write under {images_dir}: {exc}") from None
    if len(tried) and (tried["status"] == "failed").all():
        raise PipelineFailure(f"all {len(tried)} download(s) failed, e.g. {tried['reason'].iloc[0]}; "
                              "is the server reachable?")
    return manifest


def _run(plan: list[tuple[shards.Shard, list[dict[str, Any]], pd.DataFrame]], params: Params, images_dir: Path,
         shards_dir: Path, progress: bool) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """Fetch what each shard still needs, one shard after another, under one rate limit.

    Returns every shard's manifest part (also written) and the records of the images requested now.
    """
    limiter = RateLimiter(params.download.rate)
    counts: Counter[str] = Counter()
    parts, tried = [], [shards.manifest_frame([])]
    with tqdm(total=sum(len(s.images) for s, _, _ in plan), initial=sum(len(done) for _, done, _ in plan),
              unit="img", desc="download", disable=None if progress else True, dynamic_ncols=True) as bar:
        def on_record(record: dict[str, Any]) -> None:
            counts[record["status"]] += 1
            bar.set_postfix_str(_brief(counts), refresh=False)
            bar.update()

        for shard, done, todo in plan:
            fresh = run_shard(todo, params.download, images_dir, shards.journal_path(shards_dir, shard.index),
                              limiter=limiter, on_record=on_record) if len(todo) else shards.manifest_frame([])
            part = shards.manifest_frame(done + fresh.to_dict("records"))
            shards.write_part(shards_dir, shard.index, part)
            parts.append(part)
            tried.append(fresh[fresh["attempts"] > 0])
    return parts, pd.concat(tried, ignore_index=True)


def _split_done(shard: shards.Shard, known: dict[str, dict[str, Any]],
                images_dir: Path) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """The shard's records a re-run keeps, and the rows it still has to fetch."""
    done = [known[i] for i, url in zip(shard.images["ImageID"], shard.images["url"])
            if shards.is_finished(known.get(i), url, images_dir)]
    todo = shard.images[~shard.images["ImageID"].isin({r["ImageID"] for r in done})]
    return done, todo


def _brief(counts: Counter[str]) -> str:
    return " ".join(f"{status}={n}" for status, n in counts.most_common())


def summary_table(manifest: pd.DataFrame) -> str:
    """Images and megabytes by status, largest first, with a total line."""
    if manifest.empty:
        return "no images selected"
    table = manifest.groupby("status").agg(images=("ImageID", "size"), bytes=("bytes", "sum"))
    table = table.sort_values(["images", "bytes"], ascending=False)
    total = len(manifest)
    lines = [f"{'status':<12}{'images':>9}{'share':>8}{'MB':>10}"]
    for status, row in table.iterrows():
        lines.append(f"{status:<12}{row['images']:>9}{row['images'] / total:>8.1%}{row['bytes'] / 1e6:>10.1f}")
    lines.append(f"{'total':<12}{total:>9}{1:>8.1%}{table['bytes'].sum() / 1e6:>10.1f}")
    return "\n".join(lines)
