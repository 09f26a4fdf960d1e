"""The metadata stage: fetch one Open Images version's metadata, convert it once to Parquet.

The class list and hierarchy come first, so ``labels`` is checked against the real class names before
gigabytes are fetched (a typo: exit 2 and a "did you mean" line). Then the image table and box file of
each subset in ``source.subsets``: only files not yet in ``data/metadata/raw/<official path>`` are fetched,
a broken earlier download resumed (:mod:`.transfer`). Each Parquet output is rebuilt only when the raw files
it came from changed (``cache.json``); a raw file that cannot be converted at all is moved to
``data/metadata/rejected/`` so the next run fetches it again. Prints what it did, one line per file and per
output. The contract: docs/architecture.md ("metadata").
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.base.errors import PipelineFailure
from pipeline.core.base.io import atomic_path, write_parquet
from pipeline.core.base.params import Params
from pipeline.core.base.paths import (
    BOXES_DIR,
    CLASSES_TABLE,
    HIERARCHY_JSON,
    IMAGES_TABLE,
    METADATA_RAW,
    METADATA_REJECTED,
    METADATA_STAMP,
)
from pipeline.core.base.redact import public_url
from pipeline.core.base.stages import Summary
from pipeline.core.net.http import HttpPolicy
from pipeline.core.net.labels import ClassList
from pipeline.core.net.sources import Layout, join_url, layout
from pipeline.stages.metadata import convert
from pipeline.stages.metadata.transfer import fetch, new_session

#: bump when the Parquet layout changes, so existing caches are converted again
FORMAT = 1
#: the class list and hierarchy are kilobytes; anything near this is not them
SMALL_FILE_CAP = 64 << 20


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return ""


class Downloader:
    """Fetches official paths under ``base_url`` into ``raw``, skipping files that are already complete."""

    def __init__(self, base_url: str, raw: Path, policy: HttpPolicy) -> None:
        self.base_url, self.raw, self.policy = base_url, raw, policy
        self.session = new_session()

    def get(self, rel: str, cap: int | None = None) -> Path:
        dest = self.raw / rel
        if dest.exists():
            print(f"  present     {rel} ({_size(dest.stat().st_size)})")
            return dest
        policy = self.policy if cap is None else dataclasses.replace(self.policy, max_bytes=min(cap, self.policy.max_bytes))
        result = fetch(join_url(self.base_url, rel), dest, policy, self.session)
        resumed = f", resumed at {_size(result.resumed_from)}" if result.resumed_from else ""
        retried = f", {result.attempts} attempts" if result.attempts > 1 else ""
        print(f"  downloaded  {rel} ({_size(result.bytes)}{resumed}{retried})")
        return dest


class Stamps:
    """``cache.json``: for each Parquet output, the format and the (path, size, mtime) of its raw inputs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.entries = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def signature(inputs: Sequence[Path]) -> dict:
        files = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in inputs]
        return {"format": FORMAT, "inputs": files}

    def fresh(self, out: Path, inputs: Sequence[Path]) -> bool:
        return out.exists() and self.entries.get(out.name) == self.signature(inputs)

    def record(self, out: Path, inputs: Sequence[Path]) -> None:
        self.entries[out.name] = self.signature(inputs)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))


def refresh(stamps: Stamps, out: Path, inputs: Sequence[Path], build: Callable[[], str]) -> None:
    """Run ``build`` (which returns a summary) unless ``out`` is newer than / matches its inputs."""
    if stamps.fresh(out, inputs):
        print(f"  up to date  {out.name}")
        return
    started = time.perf_counter()
    try:
        summary = build()
    except convert.UnusableFile as exc:
        raise PipelineFailure(f"{exc}; {set_aside(exc.path)}") from None
    stamps.record(out, inputs)
    print(f"  converted   {out.name}: {summary} in {time.perf_counter() - started:.1f} s")


def set_aside(raw: Path) -> str:
    """Move a raw file that cannot be converted out of ``raw/`` (to ``rejected/``, one per official path), so
    the next run fetches it again; say where it went. Kept rather than deleted: it is what the server sent."""
    aside = METADATA_REJECTED / raw.relative_to(METADATA_RAW)
    aside.parent.mkdir(parents=True, exist_ok=True)
    os.replace(raw, aside)
    return f"moved it to {aside} (look at it, then delete it): the next run fetches it again"


def _warn_skipped(stats: convert.ConvertStats) -> str:
    if not stats.skipped:
        return ""
    reasons = ", ".join(f"{n:,} {reason}" for reason, n in stats.reasons.most_common())
    return f"; skipped {stats.skipped:,} row(s) ({reasons}), first: {stats.first_skipped}"


def _write_hierarchy(raw: Path) -> str:
    convert.read_hierarchy(raw)  # refuse anything that is not the hierarchy before it becomes an output
    with atomic_path(HIERARCHY_JSON) as tmp:
        tmp.write_bytes(raw.read_bytes())
    return f"{_size(raw.stat().st_size)} verbatim"


def _write_classes(raw: Path) -> str:
    table = convert.read_classes(raw)
    write_parquet(table, CLASSES_TABLE)
    return f"{table.num_rows} classes"


def _write_images(raws: dict[str, Path]) -> str:
    stats = convert.convert_images(raws, IMAGES_TABLE)
    return f"{stats.rows:,} images{_warn_skipped(stats)}"


def _write_boxes(raws: dict[str, Path]) -> str:
    stats = convert.convert_boxes(raws, BOXES_DIR)
    return f"{stats.rows:,} boxes in {stats.labels} label partitions{_warn_skipped(stats)}"


@dataclass(frozen=True)
class MetadataSummary(Summary):
    """The labels of params.yaml, as the class list names them: ``{MID: display name}``."""

    labels: dict[str, str]

    def lines(self) -> list[str]:
        return ["labels: " + ", ".join(f"{name} ({mid})" for mid, name in self.labels.items())]


def run(params: Params) -> MetadataSummary:
    """The stage: fetch what is missing, convert what changed, and check ``params.labels`` on the way."""
    source = params.source
    version, base_url, subsets, labels = source.version, source.base_url, source.subsets, params.labels
    lay: Layout = layout(version)
    print(f"metadata {version} from {public_url(base_url)} (subsets: {', '.join(subsets)})")
    downloader = Downloader(base_url, METADATA_RAW, HttpPolicy.for_metadata(params.runtime, params.metadata.max_bytes))
    stamps = Stamps(METADATA_STAMP)
    classes_raw = downloader.get(lay.classes, cap=SMALL_FILE_CAP)
    hierarchy_raw = downloader.get(lay.hierarchy, cap=SMALL_FILE_CAP)
    refresh(stamps, CLASSES_TABLE, [classes_raw], lambda: _write_classes(classes_raw))
    refresh(stamps, HIERARCHY_JSON, [hierarchy_raw], lambda: _write_hierarchy(hierarchy_raw))
    classes = ClassList.load(CLASSES_TABLE)
    mids = classes.resolve_all(labels)  # before the big downloads: a typo costs nothing

    images = {subset: downloader.get(lay.images[subset]) for subset in subsets}
    boxes = {subset: downloader.get(lay.boxes[subset]) for subset in subsets}
    refresh(stamps, IMAGES_TABLE, list(images.values()), lambda: _write_images(images))
    refresh(stamps, BOXES_DIR, list(boxes.values()), lambda: _write_boxes(boxes))
    return MetadataSummary({mid: classes.names[mid] for mid in mids})
