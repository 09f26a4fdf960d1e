"""What the training additions cost on the CPU, measured in a finished demo workspace, side by side.

Each line is one addition of "training beyond the tutorials", timed the way the stages run it, on the
workspace's own splits, model and params:

- ``shards stage``: ``python -m pipeline.stages.shards`` as its own process (imports included), wall and CPU;
- ``batch grid``: drawing the augmented batch and saving ``reports/train/batch.png``;
- ``best epoch``: one copy of the model's weights (made after every epoch that is the best so far);
- ``most confused``: the pairs from the test confusion matrix;
- ``Grad-CAM``: choosing ``evaluate.gradcam`` mistakes + right answers, decoding them, their maps, and
  saving ``gradcam.png``;
- ``evaluate page``: ``reports/evaluate/index.html``;
- ``webdataset import``: what the train and evaluate stages' start-up pays for the shard reader.

Run the demo first, then (from the repository root, venv active):
    python -m pipeline.demo --workspace demo-workspace
    python bench/train_additions_bench.py demo-workspace
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.core.base.io import save_figure  # noqa: E402
from pipeline.core.base.params import load_params  # noqa: E402
from pipeline.core.learn.data import Normalize, decode  # noqa: E402
from pipeline.core.learn.device import pick_device  # noqa: E402
from pipeline.core.learn.folders import (
    read_classes,
    read_split,  # noqa: E402
)
from pipeline.core.learn.models import load_checkpoint  # noqa: E402
from pipeline.stages.evaluate import stage as evaluate  # noqa: E402
from pipeline.stages.evaluate.explain import gradcam  # noqa: E402
from pipeline.stages.train.stage import augmented_sample, batch_figure  # noqa: E402


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def child_process(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall, CPU) of a command run as a child process, CPU from the children's rusage."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def child_import(module: str, cwd: Path) -> tuple[float, float]:
    """(wall, CPU) of importing ``module`` in a fresh interpreter that has already imported torch."""
    code = (f"import time, torch; w, c = time.perf_counter(), time.process_time(); import {module}; "
            "print(time.perf_counter() - w, time.process_time() - c)")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True, capture_output=True, text=True)
    wall, cpu = result.stdout.split()
    return float(wall), float(cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", type=Path, help="a workspace where the demo (or dvc repro) has run")
    args = parser.parse_args(argv)
    ws = args.workspace.resolve()
    os.chdir(ws)
    params = load_params()
    load_before = os.getloadavg()[0]
    splits = Path("data/splits")
    classes = read_classes(splits)
    train_split = read_split(splits, "train", classes)
    model, info = load_checkpoint(Path("models/model.pt"))
    device = pick_device(params.runtime.device)
    out = Path(tempfile.mkdtemp(prefix="additions-"))
    rows: list[tuple[str, float, float]] = []

    rows.append(("shards stage (own process)", *child_process([sys.executable, "-m", "pipeline.stages.shards"], ws)))
    rows.append(("webdataset import (after torch)", *child_import("webdataset", ws)))

    def grid() -> None:
        images, targets = augmented_sample(train_split, params.train)
        save_figure(batch_figure(images, targets, classes.labels), out / "batch.png")
    rows.append((f"batch grid ({min(params.train.batch_size, 64)} images)", *timed(grid)))
    rows.append(("best epoch: one weights copy", *timed(lambda: {k: v.clone() for k, v in model.state_dict().items()})))

    plain = evaluate.evaluate(params.runtime, Path("models/model.pt"), splits, explain=0)
    matrix = evaluate.confusion_matrix(torch.tensor(plain.predicted), torch.tensor(plain.split.targets),
                                       len(plain.labels))
    rows.append(("most confused", *timed(lambda: evaluate.most_confused(matrix, plain.labels))))

    def explain() -> None:  # what evaluate() adds for the maps, then the figure: the stage's own calls
        count = params.evaluate.gradcam
        chosen = evaluate.worst_mistakes(plain, count) + evaluate.right_sample(plain, count)
        images = torch.stack([decode(plain.split.paths[i], info.img_size) for i in chosen])
        normalize = Normalize(info.mean, info.std, device)
        maps = gradcam(model.to(device), images, plain.probs.argmax(1)[chosen], device, normalize)
        plain.explained = [evaluate.Explained(i, im, m) for i, im, m in zip(chosen, images, maps, strict=True)]
        plain.explained_layer = evaluate.layer_name(model)
        save_figure(evaluate.gradcam_figure(plain), out / "gradcam.png")
    rows.append((f"Grad-CAM ({2 * params.evaluate.gradcam} maps at most + figure)", *timed(explain)))
    rows.append(("evaluate page", *timed(lambda: evaluate.report_page(plain.metrics, ["a.png"]))))

    print(f"workspace {ws}: {len(train_split)} train / {len(plain.split)} test images, {params.train.arch} at "
          f"{params.train.img_size} px on {device.type}, {torch.get_num_threads()} threads; "
          f"load average before: {load_before:.2f}")
    print(f"{'addition':<40}{'wall s':>9}{'CPU s':>9}")
    for name, wall_s, cpu_s in rows:
        print(f"{name:<40}{wall_s:>9.3f}{cpu_s:>9.3f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
