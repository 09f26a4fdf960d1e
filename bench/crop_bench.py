"""Crops per second: the crop stage against the naive way and the decode-only floor, side by side.

Data: ``--images`` seeded JPEGs of 1024x768 (quality 90) drawn with the mirror's painter
(:mod:`pipeline.mirror.drawing`), 2-4 boxes each (sides 20-60 % of the photo's), about 3 % of the photos
with Rotation 90 or 270, laid out as the crop stage's inputs (``data/selected.parquet``, ``data/images``
and its manifest). Generated once into ``--out`` and re-used.

Methods, all cutting the same boxes at the same JPEG quality:

- ``naive``: for every box, open the photo again, decode, crop, turn, save; one process, one at a time.
- ``floor``: decode every photo once and nothing else (``Image.open(path).load()``), one process.
- ``floor xN``: the same decode-only work spread over the same N-process pool the crop stage uses.
- ``ours xN``: :func:`pipeline.stages.crop.crop_all` with ``crop.workers = N`` (plan, pool, manifest, everything).

Each method runs ``--rounds`` times, interleaved; the table shows the best and the median run. Every run that
writes (naive, ours) writes into a **fresh folder of its own** (``runs/<method>-<round>``), after an
``os.sync()`` so no earlier run's dirty pages are written back on its clock; old run folders are deleted only
before the first and after the last run, never between timed runs: ext4 creates files slowly right after a
mass delete, which made an emptied folder cost up to 3 ms per photo of "write". Other engineers share the
machine, so every run records the CPU that *other* processes used meanwhile: system-wide busy CPU time
(psutil) minus this process and its waited-for children (getrusage), shown as cores kept busy on average.
A last section splits one process's crop work into its steps (read, decode, RGB, hash, cut, encode, write).

Usage: ``python bench/crop_bench.py [--images 500] [--workers 2] [--rounds 3] [--out bench/out/crop]``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from measure import busy_cpu_seconds, own_cpu_seconds  # noqa: E402

from pipeline.core.base import paths
from pipeline.core.base.io import write_parquet  # noqa: E402
from pipeline.core.base.params import CropParams  # noqa: E402
from pipeline.core.images.imaging import image_phash, load_image, rotation_degrees, to_rgb, upright  # noqa: E402
from pipeline.mirror import drawing  # noqa: E402
from pipeline.stages.crop import stage as crop  # noqa: E402

SIZE = (1024, 768)
MIDS = {"Hamburger": "/m/0cdn1", "Sandwich": "/m/0l515"}
QUALITY = CropParams().jpeg_quality


# ----------------------------------------------------------------------------------------------------------
# Data


def generate(out: Path, images: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The crop stage's inputs under ``out`` (re-used when made with the same arguments)."""
    spec = {"images": images, "seed": seed, "size": list(SIZE), "version": 1}
    stamp = out / "spec.json"
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return pd.read_parquet(out / paths.SELECTED), pd.read_parquet(out / paths.IMAGES_MANIFEST)
    shutil.rmtree(out, ignore_errors=True)
    (out / paths.IMAGES_DIR).mkdir(parents=True)
    boxes, downloads = [], []
    for i in range(images):
        image_id = hashlib.sha256(f"{seed}/{i}".encode()).hexdigest()[:16]
        rng = np.random.default_rng([seed, i])
        picture = drawing.background(SIZE, rng)
        rotation = float(rng.choice([90.0, 270.0])) if rng.random() < 0.03 else 0.0
        for n in range(int(rng.integers(2, 5))):
            label = list(MIDS)[(i + n) % 2]
            w, h = (rng.uniform(0.2, 0.6, size=2) * SIZE).astype(int)
            x0, y0 = int(rng.integers(0, SIZE[0] - w)), int(rng.integers(0, SIZE[1] - h))
            drawing.draw_object(picture, MIDS[label], (x0, y0, x0 + w, y0 + h), rng)
            boxes.append({"ImageID": image_id, "Subset": "train", "BoxIndex": 10 * i + n, "Label": label,
                          "LabelName": MIDS[label], "XMin": x0 / SIZE[0], "XMax": (x0 + w) / SIZE[0],
                          "YMin": y0 / SIZE[1], "YMax": (y0 + h) / SIZE[1], "Rotation": rotation})
        picture.save(out / paths.IMAGES_DIR / f"{image_id}.jpg", quality=90)
        downloads.append({"ImageID": image_id, "Subset": "train", "status": "ok", "reason": "",
                          "path": f"{image_id}.jpg"})
    frames = pd.DataFrame(boxes), pd.DataFrame(downloads)
    write_parquet(frames[0], out / paths.SELECTED)
    write_parquet(frames[1], out / paths.IMAGES_MANIFEST)
    stamp.write_text(json.dumps(spec))
    return frames


# ----------------------------------------------------------------------------------------------------------
# The methods


def naive(boxes: pd.DataFrame, images_dir: Path, out: Path) -> int:
    """Open the photo again for every box: decode, crop, turn, save. One at a time."""
    out.mkdir(parents=True)
    for row in boxes.itertuples():
        with Image.open(images_dir / f"{row.ImageID}.jpg") as photo:
            rgb = photo.convert("RGB")
            piece = rgb.crop(crop.pixel_box(rgb.size, row.XMin, row.XMax, row.YMin, row.YMax))
            upright(piece, rotation_degrees(row.Rotation)).save(out / f"{row.ImageID}_{row.BoxIndex}.jpg",
                                                                 quality=QUALITY)
    return len(boxes)


def decode_files(files: Sequence[Path]) -> int:
    for path in files:
        with Image.open(path) as photo:
            photo.load()
    return len(files)


def floor(files: list[Path], workers: int) -> None:
    """Decode every photo once, nothing else; over a pool of ``workers`` processes when more than one."""
    if workers == 1:
        decode_files(files)
        return
    chunk = max(1, min(crop.MAX_CHUNK, -(-len(files) // (workers * 8))))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(decode_files, [files[i:i + chunk] for i in range(0, len(files), chunk)]))


def ours(boxes: pd.DataFrame, downloads: pd.DataFrame, root: Path, workers: int, out: Path) -> int:
    manifest = crop.crop_all(boxes, downloads, CropParams(), workers,
                             images_dir=root / paths.IMAGES_DIR, crops_dir=out)
    return int((manifest["status"] == "ok").sum())


# ----------------------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Run:
    wall: float
    own_cpu: float
    others_cpu: float


@contextmanager
def measured(runs: list[Run]) -> Iterator[None]:
    busy, own, start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    yield
    wall = time.perf_counter() - start
    own_cpu = own_cpu_seconds() - own
    runs.append(Run(wall, own_cpu, max(0.0, busy_cpu_seconds() - busy - own_cpu)))


def breakdown(boxes: pd.DataFrame, downloads: pd.DataFrame, root: Path, out: Path,
              limit: int = 150) -> dict[str, float]:
    """CPU seconds per photo spent in each step of the crop stage's work, in this one process."""
    rows = crop.plan(boxes, downloads, root / paths.IMAGES_DIR)
    tasks = crop.build_tasks(rows.assign(crop_path=rows["BoxIndex"].map("{}.jpg".format)), out)
    out.mkdir(parents=True)
    os.sync()
    steps = dict.fromkeys(["read", "decode", "to RGB", "perceptual hash", "cut + turn", "encode", "write"], 0.0)
    for task in tasks[:limit]:
        clock = time.process_time()

        def lap(step: str) -> None:
            nonlocal clock
            now = time.process_time()
            steps[step] += now - clock
            clock = now

        data = Path(task.path).read_bytes()
        lap("read")
        photo = load_image(data, 10**8)
        lap("decode")
        photo = to_rgb(photo)
        lap("to RGB")
        image_phash(photo)
        lap("perceptual hash")
        for box in task.boxes:
            piece = upright(photo.crop(crop.pixel_box(photo.size, box.xmin, box.xmax, box.ymin, box.ymax)),
                            rotation_degrees(task.rotation))
            lap("cut + turn")
            jpeg = crop.encode_jpeg(piece, QUALITY)
            lap("encode")
            Path(box.out).write_bytes(jpeg)
            lap("write")
    return {step: seconds / min(limit, len(tasks)) for step, seconds in steps.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="processes for 'ours' and the pooled floor")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "crop")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    boxes, downloads = generate(args.out, args.images, args.seed)
    images_dir = args.out / paths.IMAGES_DIR
    files = [images_dir / p for p in downloads["path"]]
    area = ((boxes["XMax"] - boxes["XMin"]) * (boxes["YMax"] - boxes["YMin"])).groupby(boxes["ImageID"]).sum()
    print(f"data: {len(files)} photos {SIZE[0]}x{SIZE[1]}, {len(boxes)} boxes "
          f"({len(boxes) / len(files):.2f} per photo, crops cover {area.mean():.0%} of a photo on average), "
          f"{sum(f.stat().st_size for f in files) / len(files) / 1e3:.0f} kB per JPEG; ready in "
          f"{time.perf_counter() - started:.0f} s")
    print(f"machine: {os.cpu_count()} CPUs, {sys.version.split()[0]}, Pillow {Image.__version__}")

    n = args.workers
    fresh = args.out / "runs"  # every writing run gets a new folder under it (see the module docstring)
    methods: dict[str, Callable[[Path], object]] = {
        "naive (1 process)": lambda out: naive(boxes, images_dir, out),
        "floor: decode only (1 process)": lambda out: floor(files, 1),
        f"floor: decode only ({n} processes)": lambda out: floor(files, n),
        "ours (1 process)": lambda out: ours(boxes, downloads, args.out, 1, out),
        f"ours ({n} processes)": lambda out: ours(boxes, downloads, args.out, n, out),
    }
    runs: dict[str, list[Run]] = {name: [] for name in methods}
    shutil.rmtree(fresh, ignore_errors=True)  # an earlier invocation's runs, deleted before any clock starts
    for round_ in range(args.rounds):
        for number, (name, method) in enumerate(methods.items()):
            os.sync()  # untimed: earlier runs' files reach the disk now, not during this run
            with measured(runs[name]):
                method(fresh / f"{number}-{round_}")
    report(runs, len(boxes), n)
    print("\nwhere one process's CPU time goes, ms per photo (first 150 photos):")
    steps = breakdown(boxes, downloads, args.out, fresh / "breakdown")
    total = sum(steps.values())
    for step, seconds in steps.items():
        print(f"  {step:<16}{seconds * 1e3:7.2f} ms  {seconds / total:5.1%}")
    print(f"  {'total':<16}{total * 1e3:7.2f} ms")
    shutil.rmtree(fresh, ignore_errors=True)


def report(runs: dict[str, list[Run]], crops: int, workers: int) -> None:
    """The table, then the ratios on the best runs (least disturbed by the others) and on the medians."""
    print(f"\n{'method':<34}{'best s':>8}{'crops/s':>9}{'median s':>10}{'own CPU s':>10}   "
          "runs: wall s (others' CPU in cores)")
    for name, rs in runs.items():
        best = min(r.wall for r in rs)
        print(f"{name:<34}{best:>8.2f}{crops / best:>9.0f}{statistics.median(r.wall for r in rs):>10.2f}"
              f"{statistics.median(r.own_cpu for r in rs):>10.2f}   "
              + "  ".join(f"{r.wall:.2f} ({r.others_cpu / r.wall:.2f})" for r in rs))
    ours, naive_, floor1, floor_n = (f"ours ({workers} processes)", "naive (1 process)",
                                     "floor: decode only (1 process)", f"floor: decode only ({workers} processes)")
    for label, pick in (("best runs", min), ("medians", statistics.median)):
        wall = {name: pick(r.wall for r in rs) for name, rs in runs.items()}
        print(f"\n{label}: ours x{workers} is {wall[naive_] / wall[ours]:.2f}x faster than naive (target >= 1.8); "
              f"takes {wall[ours] / wall[floor1]:.2f}x the 1-process decode-only floor (target <= 1.5), "
              f"{wall[ours] / wall[floor_n]:.2f}x the {workers}-process floor; "
              f"ours x1 / floor x1 = {wall['ours (1 process)'] / wall[floor1]:.2f}")
    cpu = {name: statistics.median(r.own_cpu for r in rs) for name, rs in runs.items()}
    print(f"\nCPU seconds (median): ours x{workers} used {cpu[ours] / cpu[floor1]:.2f}x the floor's CPU and "
          f"{cpu[naive_] / cpu[ours]:.2f}x less than naive")


if __name__ == "__main__":
    main()
