"""The crop stage: cut every selected box out of its downloaded photo, upright, as a JPEG.

Boxes are cut from the stored pixels (EXIF orientation never applied), then turned counter-clockwise by
``Rotation``; ``crop.padding`` widens a box, ``crop.min_side`` skips, ``crop.max_side`` shrinks. Each photo is
decoded once for all its boxes, by a process pool or a Dask cluster (``runtime.engine``), and its perceptual
hash taken for clean. Output: ``data/crops/<label_dirname>/<ImageID>_<BoxIndex>.jpg`` and the manifest, the
folder swapped in whole; with ``runtime.store`` the crops go through this run's own store folder. The
conventions and why: docs/architecture.md ("crop").
"""
from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from PIL import Image

from pipeline.core.base import manifests, paths
from pipeline.core.base.io import replace_dir, write_parquet
from pipeline.core.base.params import CropParams, Params, RuntimeParams
from pipeline.core.base.progress import Progress
from pipeline.core.base.safe import is_image_id, label_dirname
from pipeline.core.base.stages import Summary
from pipeline.core.base.status import KEPT_ON_DISK, Crop
from pipeline.core.compute import store
from pipeline.core.compute.engine import Engine, open_engine
from pipeline.core.compute.machine import processes
from pipeline.core.compute.store import Store, open_store, store_at
from pipeline.core.images.imaging import ImageProblem, image_phash, load_image, rotation_degrees, to_rgb, upright

BOX_COLUMNS = ("ImageID", "Subset", "BoxIndex", "Label", "LabelName", "XMin", "XMax", "YMin", "YMax", "Rotation")
JPEG_SUBSAMPLING = "4:2:0"
#: photos per task sent to a worker: large enough to hide the hand-over, small enough to balance the cores
MAX_CHUNK = 32


class BoxTask(NamedTuple):
    """One box to cut: normalised coordinates and the absolute output path."""

    xmin: float
    xmax: float
    ymin: float
    ymax: float
    out: str


class ImageTask(NamedTuple):
    """One photo and all of its boxes (decoded once for all of them)."""

    path: str
    rotation: float | None
    boxes: tuple[BoxTask, ...]


class BoxResult(NamedTuple):
    """What became of one box: the manifest's status, reason and crop size."""

    status: str
    reason: str
    width: int
    height: int


class ImageResult(NamedTuple):
    """The photo's perceptual hash ('' when it did not decode) and its boxes' results, in task order."""

    phash: str
    boxes: list[BoxResult]


def pixel_box(size: tuple[int, int], xmin: float, xmax: float, ymin: float, ymax: float,
              padding: float = 0.0) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` pixels of a normalised box, padded and clamped to the picture.

    Bad metadata (swapped or out-of-range coordinates) cannot make an invalid crop; NaN gives an empty box.
    """
    width, height = size
    left, right = _span(xmin, xmax, width, padding)
    top, bottom = _span(ymin, ymax, height, padding)
    return left, top, right, bottom


def _span(low: float, high: float, extent: int, padding: float) -> tuple[int, int]:
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0, 0
    low, high = sorted((low, high))
    pad = (high - low) * padding
    low, high = (min(max(v, 0.0), 1.0) for v in (low - pad, high + pad))
    return round(low * extent), round(high * extent)


def crop_image(task: ImageTask, params: CropParams) -> ImageResult:
    """Read and decode one photo, then cut, turn, shrink and save each of its boxes."""
    try:
        degrees = rotation_degrees(task.rotation)
        data = _read(task.path)
        image = to_rgb(load_image(data, params.max_pixels))
    except ImageProblem as exc:
        return ImageResult("", [BoxResult(exc.status, str(exc), 0, 0)] * len(task.boxes))
    return ImageResult(image_phash(image), [_cut(image, box, degrees, params) for box in task.boxes])


def _read(path: str) -> bytes:
    try:
        return store.read_file(path)  # a path, or an object store URL (runtime.store)
    except OSError as exc:
        raise ImageProblem(f"cannot read {Path(path).name}: {exc.strerror}") from None


def _cut(image: Image.Image, box: BoxTask, degrees: int, params: CropParams) -> BoxResult:
    if not all(math.isfinite(v) for v in (box.xmin, box.xmax, box.ymin, box.ymax)):
        return BoxResult(Crop.BAD_BOX, "box coordinates are not finite numbers", 0, 0)
    left, top, right, bottom = pixel_box(image.size, box.xmin, box.xmax, box.ymin, box.ymax, params.padding)
    width, height = right - left, bottom - top
    if min(width, height) < params.min_side:
        reason = f"crop is {width}x{height} px, shorter side under crop.min_side={params.min_side}"
        return BoxResult(Crop.TOO_SMALL, reason, width, height)
    crop = upright(image.crop((left, top, right, bottom)), degrees)
    if params.max_side and max(crop.size) > params.max_side:
        crop = shrink(crop, params.max_side)
    # Written straight to its name: the whole folder is built aside and swapped in at the end (replace_dir),
    # so a crash never leaves a half-written crop in data/crops (a temp file + rename per crop would only add
    # a file-system operation per crop), and an object store shows a put whole or not at all. A failed write
    # (disk full, permissions) is a PipelineFailure: the run cannot succeed, unlike with a bad photo.
    store.write_file(box.out, encode_jpeg(crop, params.jpeg_quality))
    return BoxResult(Crop.OK, "", *crop.size)


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """Scale down so the longer side is ``max_side`` (Lanczos after a fast integer pre-reduction)."""
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """RGB JPEG bytes, 4:2:0, without EXIF (so no viewer turns the upright crop again)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING)
    return buffer.getvalue()


def crop_chunk(tasks: Sequence[ImageTask], params: CropParams) -> list[ImageResult]:
    """A worker's unit of work (module level so the process pool can pickle it)."""
    return [crop_image(task, params) for task in tasks]


def _crop_task(params: CropParams, tasks: Sequence[ImageTask], emit: Callable[[object], None]) -> list[ImageResult]:
    """:func:`crop_chunk` as a task of :class:`pipeline.core.compute.engine.Engine` (one chunk is a few seconds of work:
    its result is the progress, no message needed)."""
    return crop_chunk(tasks, params)


def run_tasks(tasks: Sequence[ImageTask], params: CropParams, engine: Engine) -> Iterator[ImageResult]:
    """Results in task order, from chunks of photos run on ``engine`` (this process, a pool, a Dask cluster)."""
    chunk = max(1, min(MAX_CHUNK, math.ceil(len(tasks) / (engine.workers * 8))))
    chunks = [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)]
    with Progress(len(tasks), "crop", "img") as bar:
        results = engine.run(_crop_task, params, chunks, on_result=lambda _, part: bar.update(len(part)))
    for part in results:
        yield from part


def plan(boxes: pd.DataFrame, downloads: pd.DataFrame, images: Store | Path | str) -> pd.DataFrame:
    """The manifest before any cutting: one row per box, ``not_downloaded`` where there is no photo in
    ``images`` (a store, a folder or an object store's URL).

    Adds the private column ``source`` (the photo's absolute path or URL, '' when none).
    """
    photos = store_at(images)
    manifests.SELECTED.require(boxes, BOX_COLUMNS)
    manifests.IMAGES.require(downloads, ("ImageID", "status", *photos.name_columns))
    got = downloads.drop_duplicates("ImageID", keep="last").set_index("ImageID")
    rows = boxes.sort_values(["ImageID", "BoxIndex"], kind="stable").reset_index(drop=True)
    status = rows["ImageID"].map(got["status"]).fillna("")
    reason = rows["ImageID"].map(got["reason"]) if "reason" in got else pd.Series("", index=rows.index)
    find, md5 = _photo_finder(photos), got["md5"] if "md5" in got else pd.Series("", index=got.index)
    found = pd.Series([find(path, digest) for path, digest in zip(got["path"], md5)], index=got.index, dtype=object)
    source = rows["ImageID"].map(found).fillna("")
    valid_id = rows["ImageID"].map(is_image_id).astype(bool)
    kept = status.isin(KEPT_ON_DISK) & valid_id
    rows = rows.assign(
        download_status=status,
        crop_path="", width=0, height=0, status=Crop.NOT_DOWNLOADED, image_phash="",
        source=source.where(kept, ""),
        reason=[_not_downloaded_reason(s, r, src) for s, r, src in zip(status, reason.fillna(""), source)],
    )
    rows.loc[rows["source"] != "", ["status", "reason"]] = ["", ""]
    if not valid_id.all():  # a doctored selection: those rows are skipped, the others cropped
        rows.loc[~valid_id, "reason"] = "ImageID is not 16 hex digits (it cannot name a file): skipped"
        print(f"warning: skipped {int((~valid_id).sum())} box(es) whose ImageID is not 16 hex digits", file=sys.stderr)
    return rows


def _photo_finder(photos: Store) -> Callable[[object, object], str]:
    """(manifest path, md5) -> where the photo is ('' when it is not there): the store names it
    (:meth:`pipeline.core.compute.store.Store.name_of`: its ImageID in a folder, its content in an object
    store), and one listing answers for every photo. Workers get absolute paths or URLs (they need no cwd)."""
    listed = photos.sizes()

    def find(relative: object, md5: object) -> str:
        name = photos.name_of(relative, md5)
        return photos.join(name) if name is not None and name in listed else ""
    return find


def _not_downloaded_reason(status: str, reason: str, source: str) -> str:
    if not status:
        return "not in the download manifest"
    if status in KEPT_ON_DISK and not source:
        return f"{status}, but the file is missing from {paths.IMAGES_DIR}"
    return f"{status}: {reason}" if reason else status


def crop_all(boxes: pd.DataFrame, downloads: pd.DataFrame, params: CropParams, workers: int = 1,
             images_dir: Path = paths.IMAGES_DIR, crops_dir: Path = paths.CROPS_DIR,
             runtime: RuntimeParams | None = None) -> pd.DataFrame:
    """Cut every box with a photo into ``crops_dir`` (rebuilt) and write its manifest; return the manifest.

    ``runtime`` chooses the engine (``workers``: the local engine's processes) and the store: with photos in
    an object store, the crops are made there too and then copied into ``crops_dir``, where clean and split
    read them.
    """
    runtime = runtime or RuntimeParams()
    photos = open_store(runtime.store, store.IMAGES, images_dir)
    rows = plan(boxes, downloads, photos)
    rows["crop_path"] = [
        f"{label_dirname(label)}/{image}_{index}.jpg" if src else ""
        for label, image, index, src in zip(rows["Label"], rows["ImageID"], rows["BoxIndex"], rows["source"])
    ]
    with replace_dir(crops_dir) as new:
        todo = rows[rows["source"] != ""]
        for folder in todo["crop_path"].map(lambda p: p.split("/")[0]).unique():
            (new / folder).mkdir()
        results = []
        # the workers' folder: ``new`` itself, or with an object store this run's own folder there, copied
        # into ``new`` and removed (never another run's: :meth:`pipeline.core.compute.store.Store.staging`)
        with open_store(runtime.store, store.CROPS, crops_dir).staging(new) as out:
            if len(todo):  # else no engine (a cluster to start or join) for nothing
                advice = "; try fewer runtime.crop_processes or a lower crop.max_pixels"
                with open_engine(runtime, min(workers, len(todo)), "crop", advice) as engine:
                    results = list(run_tasks(build_tasks(todo, out), params, engine))
        done = [box for result in results for box in result.boxes]  # in the order of todo's rows
        for column, values in zip(("status", "reason", "width", "height"), zip(*done)):
            rows.loc[todo.index, column] = list(values)
        rows.loc[todo.index, "image_phash"] = [result.phash for result in results for _ in result.boxes]
        rows.loc[rows["status"] != Crop.OK, "crop_path"] = ""
        manifest = rows[list(manifests.CROPS.columns)].astype({"width": "int64", "height": "int64", "BoxIndex": "int64"})
        write_parquet(manifest, new / paths.CROPS_MANIFEST.name)
    return manifest


def build_tasks(todo: pd.DataFrame, out_dir: Path | str) -> list[ImageTask]:
    """One task per photo, its boxes in row order, from rows sorted by ImageID.

    Plain lists, not a pandas groupby: per-group DataFrames cost milliseconds each, which for thousands of
    photos would keep the workers waiting longer than the cropping itself.
    """
    images = todo["ImageID"].tolist()
    starts = [i for i in range(len(images)) if i == 0 or images[i] != images[i - 1]]
    columns = [todo[c].tolist() for c in ("XMin", "XMax", "YMin", "YMax", "crop_path")]
    sources, rotations = todo["source"].tolist(), todo["Rotation"].tolist()
    tasks = []
    for start, end in zip(starts, starts[1:] + [len(images)]):
        boxes = tuple(BoxTask(float(x0), float(x1), float(y0), float(y1), store.join(str(out_dir), rel))
                      for x0, x1, y0, y1, rel in zip(*(column[start:end] for column in columns)))
        rotation = rotations[start]
        tasks.append(ImageTask(sources[start], None if pd.isna(rotation) else float(rotation), boxes))
    return tasks


@dataclass(frozen=True)
class CropSummary(Summary):
    """How many boxes ended in each status (``ok``: a crop written)."""

    statuses: dict[str, int]

    def lines(self) -> list[str]:
        others = ", ".join(f"{n} {status}" for status, n in self.statuses.items() if status != Crop.OK)
        return [f"{self.statuses.get(Crop.OK, 0)} crops written to {paths.CROPS_DIR}; {others}"]


def run(params: Params) -> CropSummary:
    """The stage: every selected box of the downloaded photos into ``data/crops`` and its manifest."""
    manifest = crop_all(manifests.SELECTED.read(), manifests.IMAGES.read(), params.crop, processes(params.runtime.crop_processes), runtime=params.runtime)
    return CropSummary({str(status): int(n) for status, n in manifest["status"].value_counts().items()})
