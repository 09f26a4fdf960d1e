"""Training images/s: how fast each way of feeding the GPU trains, side by side in one run.

For each architecture (resnet50 and mobilenet_v2 by default), the same training step (AdamW + one-cycle,
bf16 autocast and channels_last on CUDA; fp32 on a CPU) is fed by:

1. ``imagefolder``: the usual torchvision ImageFolder + PIL transforms (RandomResizedCrop, flip, ToTensor,
   Normalize) through a DataLoader with ``--workers`` processes;
2. ``cached``: this pipeline's default (``pipeline.core.learn.data``): every JPEG decoded once into a uint8
   tensor on the device, random resized crop + flip done batched on the device;
3. ``streamed``: this pipeline's fallback for datasets over the cache budget: uint8 tensors decoded by
   DataLoader workers every epoch, the same device-side augmentation;
4. ``shards``: the same, read from WebDataset tar shards of the dataset (``pipeline.core.learn.shards``,
   written by ``pipeline.stages.shards.write`` as the shards stage writes them; written once before the run, ``--shard-images`` images each) instead
   of one file per image;
5. ``ceiling``: synthetic tensors already on the device: the fastest the model can train at all.

The dataset is a class-folder tree of JPEGs written with PIL (photo-like: gradients, shapes, sensor
noise), 640x480 by default or crop-like random sizes with ``--jpeg-size crops``. The one-off decode of
``cached`` is timed and printed separately. Also printed: the CPU time other processes used meanwhile.

GPU (224 px, bf16 autocast, channels_last; needs torch, torchvision, numpy, pillow, tqdm and webdataset;
psutil optional):
    python bench/train_bench.py --device cuda --json bench/out/train_bench.json
CPU smoke check (tiny: 64 px, a few steps):
    python bench/train_bench.py --device cpu
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
try:
    from pipeline.core.base.params import TrainParams
    from pipeline.core.learn.data import TRAIN_CACHE_RATIO, Normalize, augment, make_batches
    from pipeline.core.learn.device import pick_device, to_device
    from pipeline.core.learn.folders import read_classes, read_split
    from pipeline.core.learn.models import IMAGENET_MEAN, IMAGENET_STD, build_model, set_body_trainable
    from pipeline.core.learn.shards import ShardBatches
    from pipeline.stages.shards.write import write_split_shards
    from pipeline.stages.train.loop import one_cycle, train_step
except ModuleNotFoundError as exc:  # a bare python with torch only: carry the project's pure-Python dependencies
    sys.exit(f"{exc}: install the project (pip install -e '.[train]'), or put a folder holding tqdm, webdataset "
             "and braceexpand on PYTHONPATH")

try:
    import psutil
except ModuleNotFoundError:
    psutil = None

Feed = Iterator[tuple[torch.Tensor, torch.Tensor]]  # model-ready inputs and targets, on the device
CLASSES = ("alpha", "bravo", "charlie", "delta")


# ---------------------------------------------------------------- the dataset
def draw_jpeg(job: tuple[Path, int, int, int]) -> int:
    """Write one photo-like JPEG (gradient, a few shapes, noise); returns its size in bytes."""
    path, seed, width, height = job
    rng = np.random.default_rng(seed)
    top, bottom = rng.uniform(40, 230, 3), rng.uniform(40, 230, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp + rng.normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    pen = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.3) * min(width, height)
        pen.ellipse((x - r, y - r, x + r, y + r * rng.uniform(0.5, 1.5)), fill=tuple(rng.integers(0, 255, 3).tolist()))
    image.save(path, quality=90)
    return path.stat().st_size


def make_dataset(root: Path, images: int, jpeg_size: str, workers: int) -> tuple[Path, float]:
    """``root/train/<class>/*.jpg`` (reused when already complete); returns the split root and mean KiB."""
    split_root = root / f"{jpeg_size}-{images}"
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(images):
        folder = split_root / "train" / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        if jpeg_size == "crops":  # crop-stage-like: boxes of every shape, 96..512 px a side
            width, height = (int(v) for v in rng.integers(96, 513, 2))
        else:
            width, height = (int(v) for v in jpeg_size.split("x"))
        jobs.append((folder / f"{i:016x}_0.jpg", i, width, height))
    todo = [job for job in jobs if not job[0].exists()]
    if todo:
        with Pool(max(1, workers)) as pool:
            pool.map(draw_jpeg, todo, chunksize=16)
    return split_root, sum(job[0].stat().st_size for job in jobs) / len(jobs) / 1024


def make_shards(split_root: Path, split, classes, per_shard: int) -> list[Path]:
    """The dataset as tar shards next to it (reused when already complete), as the shards stage writes them."""
    out = split_root.with_name(f"{split_root.name}-shards-{per_shard}")
    done = out / "done.json"
    if done.exists():
        return [out / name for name in json.loads(done.read_text())]
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.tar"):
        old.unlink()
    written = write_split_shards(split, split_root, classes, out, per_shard, 1 << 40).files
    done.write_text(json.dumps(written))
    return [out / name for name in written]


# ---------------------------------------------------------------- the feeds
def forever(batches) -> Iterator:
    """Epoch after epoch of an iterable of batches."""
    return itertools.chain.from_iterable(itertools.repeat(batches))


def imagefolder_feed(split_root: Path, size: int, batch: int, workers: int, device: torch.device) -> Feed:
    """torchvision's usual recipe: PIL decode + transforms in DataLoader workers, float tensors to the device."""
    tf = transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    loader = torch.utils.data.DataLoader(
        torchvision.datasets.ImageFolder(split_root / "train", tf), batch_size=batch, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    for images, targets in forever(loader):
        yield (images.to(device, non_blocking=True).contiguous(memory_format=layout),
               targets.to(device, non_blocking=True))


def pipeline_feed(batches, size: int, device: torch.device) -> Feed:
    """This pipeline's training feed: uint8 batches on the device -> random resized crop + flip -> normalise."""
    normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD, device)
    generator = torch.Generator(device=device).manual_seed(0)
    for images, targets in forever(batches):
        yield normalize(augment(images, size, generator, TrainParams().min_scale)), targets


def ceiling_feed(size: int, batch: int, classes: int, device: torch.device) -> Feed:
    """One normalised batch made once on the device, fed again and again."""
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=layout)
    targets = torch.randint(0, classes, (batch,), device=device)
    while True:
        yield images, targets


# ---------------------------------------------------------------- measuring
class CpuMeter:
    """CPU seconds used by processes other than this one and its children (DataLoader workers) meanwhile."""

    def __enter__(self) -> CpuMeter:
        self.other_cores = None
        if psutil:
            self.start = (time.perf_counter(), self._busy(), self._own())
        return self

    def __exit__(self, *exc: object) -> None:
        if psutil:
            wall, busy, own = time.perf_counter(), self._busy(), self._own()
            self.other_cores = max(0.0, (busy - self.start[1]) - (own - self.start[2])) / (wall - self.start[0])

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    @staticmethod
    def _own() -> float:
        me = psutil.Process()
        total = sum(me.cpu_times()[:4])  # user, system, children_user, children_system
        for child in me.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(arch: str, feed: Feed, batch: int, warmup: int, steps: int, device: torch.device) -> dict:
    """Train ``arch`` (all layers) on ``feed``: images/s over ``steps`` steps after ``warmup`` steps."""
    torch.manual_seed(0)
    model = to_device(build_model(arch, len(CLASSES)), device)
    set_body_trainable(model, True)
    model.train()
    optimizer, scheduler = one_cycle(model, [1e-3] * 3, warmup + steps, 0.01, 0.3, 5.0)
    for _ in range(warmup):
        train_step(model, *next(feed), optimizer, scheduler, device)
    sync(device)
    with CpuMeter() as cpu:
        start = time.perf_counter()
        for _ in range(steps):
            loss = train_step(model, *next(feed), optimizer, scheduler, device)
        sync(device)
        seconds = time.perf_counter() - start
    feed.close()  # stops DataLoader workers before the next measurement
    return {"images_per_s": steps * batch / seconds, "seconds": seconds, "loss": loss.item(),
            "other_cpu_cores": cpu.other_cores}


def augment_only(batches, size: int, steps: int, device: torch.device) -> float:
    """Images/s of the device-side augmentation + normalisation alone (what ``cached`` adds per step)."""
    feed = pipeline_feed(batches, size, device)
    next(feed)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        next(feed)
    sync(device)
    seconds = time.perf_counter() - start
    feed.close()
    return steps * batches.batch_size / seconds


# ---------------------------------------------------------------- the run
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--archs", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--feeds", nargs="+", default=["ceiling", "imagefolder", "cached", "streamed", "shards"],
                        choices=("ceiling", "imagefolder", "cached", "streamed", "shards"))
    parser.add_argument("--images", type=int, help="JPEGs in the dataset (GPU 8192, CPU 48)")
    parser.add_argument("--jpeg-size", default="640x480", help="WxH of every JPEG, or 'crops' for random box sizes")
    parser.add_argument("--size", type=int, help="training resolution (GPU 224, CPU 64)")
    parser.add_argument("--batch", type=int, help="batch size (GPU 256, CPU 8)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (GPU 30, CPU 2)")
    parser.add_argument("--steps", type=int, help="timed steps (GPU 100, CPU 5)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (GPU 14, CPU 1)")
    parser.add_argument("--shard-images", type=int,
                        help="images per tar shard (default: enough shards for two per worker)")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "train_bench",
                        help="where the JPEGs are written (reused by later runs)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    gpu = pick_device(args.device).type == "cuda"
    # GPU warm-up: long enough to drain what the DataLoader workers queued while cuDNN autotuned,
    # so the timed steps see the steady rate, not a pre-filled queue
    defaults = {"images": (8192, 48), "size": (224, 64), "batch": (256, 8), "warmup": (30, 2),
                "steps": (100, 5), "workers": (14, 1)}
    for name, (on_gpu, on_cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, on_gpu if gpu else on_cpu)
    if args.shard_images is None:  # each worker streams whole shards: give every one of them two
        args.shard_images = max(1, args.images // (2 * max(1, args.workers)))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    started = time.perf_counter()
    split_root, kib = make_dataset(args.root, args.images, args.jpeg_size, os.cpu_count() or 1)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device.type} ({gpu_name}), {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}")
    print(f"dataset: {args.images} JPEGs ({args.jpeg_size}, mean {kib:.0f} KiB) in {len(CLASSES)} classes; "
          f"train at {args.size} px, batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps, "
          f"{args.workers} workers")

    classes = read_classes(split_root)
    split = read_split(split_root, "train", classes)
    cache_size = round(args.size * TRAIN_CACHE_RATIO)
    decode_start = time.perf_counter()
    with CpuMeter() as cpu:
        cached = make_batches(split, cache_size, args.batch, shuffle=True, device=device, workers=args.workers,
                              cache_mb=1 << 30)
        sync(device)
    decode_s = time.perf_counter() - decode_start
    print(f"cached: one-off decode of {len(split)} JPEGs to {cache_size} px uint8 on {device.type}: "
          f"{decode_s:.1f} s = {len(split) / decode_s:.0f} img/s ({cached.images.nbytes / 2**20:.0f} MiB)"
          + (f", other processes {cpu.other_cores:.2f} cores" if cpu.other_cores is not None else ""))
    aug = augment_only(cached, args.size, max(args.steps, 5), device)
    print(f"cached: augmentation + normalisation alone: {aug:.0f} img/s")
    shard_files = make_shards(split_root, split, classes, args.shard_images) if "shards" in args.feeds else []
    if shard_files:
        mib = sum(f.stat().st_size for f in shard_files) / 2**20
        print(f"shards: {len(shard_files)} tar files of up to {args.shard_images} images ({mib:.0f} MiB)")

    feeds: dict[str, Callable[[], Feed]] = {
        "ceiling": lambda: ceiling_feed(args.size, args.batch, len(CLASSES), device),
        "imagefolder": lambda: imagefolder_feed(split_root, args.size, args.batch, args.workers, device),
        "cached": lambda: pipeline_feed(cached, args.size, device),
        "streamed": lambda: pipeline_feed(
            make_batches(split, cache_size, args.batch, shuffle=True, device=device, workers=args.workers,
                         cache_mb=0), args.size, device),
        "shards": lambda: pipeline_feed(
            ShardBatches(shard_files, len(split), cache_size, args.batch, len(classes.dirnames), shuffle=True,
                         seed=0, workers=args.workers, device=device), args.size, device),
    }
    results = []
    print(f"\n{'arch':<14}{'feed':<13}{'img/s':>9}{'of ceiling':>12}{'other CPU':>11}")
    for arch in args.archs:
        ceiling = None
        for name in args.feeds:
            r = measure(arch, feeds[name](), args.batch, args.warmup, args.steps, device)
            ceiling = r["images_per_s"] if name == "ceiling" else ceiling
            share = f"{100 * r['images_per_s'] / ceiling:.0f}%" if ceiling else "-"
            other = f"{r['other_cpu_cores']:.2f}" if r["other_cpu_cores"] is not None else "n/a"
            print(f"{arch:<14}{name:<13}{r['images_per_s']:>9.0f}{share:>12}{other:>11}", flush=True)
            results.append({"arch": arch, "feed": name, "of_ceiling": r["images_per_s"] / ceiling if ceiling else None,
                            **r})
    print(f"\n(other CPU = cores' worth of CPU used by other processes during the timed steps; "
          f"total {time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": device.type, "device_name": gpu_name, "cpus": os.cpu_count(), "torch": torch.__version__,
            "args": {k: str(v) for k, v in vars(args).items()}, "decode_images_per_s": len(split) / decode_s,
            "augment_images_per_s": aug, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
