"""``python -m pipeline.demo``: the whole pipeline, offline, on the bundled mini mirror.

It starts the local Open Images mirror (:mod:`pipeline.mirror`) on 127.0.0.1, writes a demo
``params.yaml`` pointing ``source.base_url`` at it, and runs the real DVC pipeline (``dvc repro``) in a
workspace folder: the same stages, code and ``dvc.yaml`` a user runs against the real Open Images, only
smaller. The workspace is a git repository like a user's own clone (a copy of this checkout's ``pipeline/``,
synced on every run, the repository's ``dvc.yaml``), and the run is committed, so ``dvc exp run`` /
``dvc exp show`` (:data:`COMPARE_COMMAND`) compare against it straight away. Why it is made so:
docs/architecture.md ("Commands outside the DVC stages").
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import yaml

from pipeline.core.base import paths
from pipeline.core.base.errors import PipelineFailure, UserError, run_cli
from pipeline.core.base.io import replace_dir, write_text
from pipeline.core.base.params import load_params

if TYPE_CHECKING:
    from pipeline.mirror import Mirror

DEMO_PORT = 8754
REPO = Path(__file__).resolve().parent.parent
#: what the mirror draws: the demo's two labels, and the others an experiment may switch to
MIRROR_LABELS = ("Hamburger", "Sandwich", "Submarine sandwich", "Hot dog", "Pizza")
#: ignored in the workspace on top of the repository's own .gitignore
WORKSPACE_IGNORES = "\n# the demo's own\n/mirror/\n"
#: What people compare, on one 80-column screen: each run's labels, dataset size (metrics/dataset.json) and
#: top-1. A plain ``dvc exp show`` puts every metric and param (over a hundred columns) first, and squeezes
#: them all to "…" in 80 columns. --drop removes every column, --keep (anchored regexes) spares these four.
COMPARE_COMMAND = "dvc exp show --drop '.*' --keep 'Experiment$|images$|top1$|labels$'"
#: the identity of the workspace's commits when git has none configured
DEMO_AUTHOR = ("openimages-pipeline demo", "demo@openimages-pipeline.invalid")

#: Small settings that finish in a few minutes on a 2-core CPU and still show every stage at work.
DEMO_PARAMS: dict = {
    "labels": ["Hamburger", "Sandwich"],
    "source": {"version": "v6", "subsets": ["train", "validation", "test"], "images": "flickr"},
    "select": {"min_box_area": 0.01, "limit_per_label": 0, "seed": 0},
    "download": {"rate": 50.0},
    "crop": {"min_side": 24, "max_side": 256},
    "split": {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 0, "min_per_label": 5},
    "train": {"arch": "mobilenet_v2", "weights": "imagenet", "freeze_epochs": 1, "epochs": 2,
              "img_size": 96, "batch_size": 32, "lr": 0.003},
    "evaluate": {"worst": 12},
    "package": {"registry": ""},  # the name follows the labels: openimages/hamburger-sandwich
    "runtime": {"connections": 16, "retries": 3, "backoff": 0.2, "max_backoff": 2.0, "read_timeout": 5.0,
                "shard_size": 50},
}


def demo_params(base_url: str, cvdf_url: str) -> dict:
    """A complete params.yaml (DVC needs every param a stage names) with the demo's settings on top."""
    overrides = {f"{section}.{key}": value for section, values in DEMO_PARAMS.items() if isinstance(values, dict)
                 for key, value in values.items()}
    overrides.update({"labels": DEMO_PARAMS["labels"], "source.base_url": base_url, "source.cvdf_url": cvdf_url})
    return load_params(Path("/nonexistent/params.yaml"), overrides).to_dict()


def sync_code(workspace: Path) -> None:
    """Make ``workspace/pipeline`` an exact copy of this checkout's ``pipeline/`` (no caches).

    The stages run as ``python -m pipeline.stages.<stage>`` in the workspace, so they import this copy,
    and dvc.yaml's code deps (``pipeline/core``, ``pipeline/stages/<stage>``) are the files that ran.
    """
    with replace_dir(workspace / "pipeline") as fresh:
        shutil.copytree(REPO / "pipeline", fresh, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def prepare_workspace(workspace: Path, params: dict) -> None:
    """Make ``workspace`` a git repository and a DVC project holding the pipeline's code, the repository's
    dvc.yaml and .gitignore and ``params``, and commit that."""
    if shutil.which("git") is None:
        raise UserError("the demo needs git (its workspace is a git repository, for dvc exp): install git")
    workspace.mkdir(parents=True, exist_ok=True)
    if not (workspace / ".git").exists():
        _run(["git", "init", "-q"], workspace)
    sync_code(workspace)
    write_text(workspace / "params.yaml", yaml.safe_dump(params, sort_keys=False))
    write_text(workspace / "dvc.yaml", (REPO / "dvc.yaml").read_text())
    write_text(workspace / ".gitignore", (REPO / ".gitignore").read_text() + WORKSPACE_IGNORES)
    if not (workspace / ".dvc").exists():
        _run([sys.executable, "-m", "dvc", "init", "-q"], workspace)
        _run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], workspace)
    elif "no_scm" in (workspace / ".dvc" / "config").read_text():  # a workspace made by an older demo
        _run([sys.executable, "-m", "dvc", "config", "--unset", "core.no_scm"], workspace)
    commit(workspace, "demo: the pipeline's code, dvc.yaml and the demo's params")


def commit(workspace: Path, message: str) -> bool:
    """Commit everything git does not ignore in ``workspace``, if anything changed; True if it did."""
    _run(["git", "add", "-A"], workspace)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=workspace, env=_env(), capture_output=True,
                            text=True, check=False)
    if not status.stdout.strip():
        return False
    _run(["git", "commit", "-q", "-m", message], workspace)
    return True


def _env() -> dict[str, str]:
    """Stages run as ``python -m ...``: make ``python`` this interpreter, keep DVC and Quilt offline, and give
    git an author for the workspace's commits when the user has configured none."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("DVC_STUDIO_OFFLINE", "true")
    env.setdefault("QUILT_DISABLE_USAGE_METRICS", "true")
    if not _git_identity():
        name, email = DEMO_AUTHOR
        for role in ("AUTHOR", "COMMITTER"):
            env.setdefault(f"GIT_{role}_NAME", name)
            env.setdefault(f"GIT_{role}_EMAIL", email)
    return env


@functools.cache
def _git_identity() -> bool:
    """Does git have a user.email (the environment's, or any config git reads)?"""
    if os.environ.get("GIT_AUTHOR_EMAIL") and os.environ.get("GIT_COMMITTER_EMAIL"):
        return True
    try:
        found = subprocess.run(["git", "config", "user.email"], capture_output=True, text=True, check=False)
    except OSError:
        return False
    return bool(found.stdout.strip())


def _run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=_env())
    if result.returncode != 0:
        raise PipelineFailure(f"'{' '.join(cmd[2:] if cmd[1] == '-m' else cmd)}' failed with exit code {result.returncode}")


def summary(workspace: Path, images_per_label: int, port: int) -> str:
    """Where the user finds what the pipeline made, the headline numbers, and how to go on from there."""
    lines = [f"demo finished in workspace {workspace} (a git repository: the run is its latest commit)"]
    eval_metrics = workspace / paths.METRICS_DIR / "eval.json"
    if eval_metrics.exists():
        metrics = json.loads(eval_metrics.read_text())
        top1 = metrics.get("top1", metrics.get("accuracy"))
        if top1 is not None:
            lines.append(f"  test accuracy (top-1): {top1:.3f}")
    package_info = workspace / paths.PACKAGE_INFO
    for label, rel in [
        ("model", paths.MODEL),
        ("training metrics", paths.METRICS_DIR / "train.json"),
        ("per-epoch metrics", Path("dvclive")),
        ("evaluation metrics", paths.METRICS_DIR / "eval.json"),
        ("dataset report", paths.REPORTS_DIR / "dataset" / "index.html"),
        ("evaluation report", paths.REPORTS_DIR / "evaluate"),
        ("package info", paths.PACKAGE_INFO),
    ]:
        lines.append(f"  {label + ':':20s}{workspace / rel}")
    if package_info.exists():
        info = json.loads(package_info.read_text())
        registry = workspace / info["registry"] if "://" not in info["registry"] else info["registry"]
        lines.append(f"  dataset {info['name']} @ {info['top_hash'][:12]}" + (
            f", model {info['model']['name']} @ {info['model']['top_hash'][:12]}" if "model" in info else "")
            + "; pull them with:")
        for name in [info["name"], *([info["model"]["name"]] if "model" in info else [])]:
            lines.append(f"    python -m pipeline.pull {name} --registry {registry} --dest DIR")
    labels = " ".join(f'"{label}"' if " " in label else label for label in MIRROR_LABELS)
    lines += [
        "  compare other labels (the mirror must be up for the stages that download):",
        f"    python -m pipeline.mirror --root {workspace / 'mirror'} --port {port} "
        f"--images-per-label {images_per_label} --labels {labels} &",
        f"    cd {workspace} && dvc exp run -S 'labels=[Pizza,\"Hot dog\"]'",
        f"    {COMPARE_COMMAND}    # every column: dvc exp show",
    ]
    return "\n".join(lines)


def start_mirror(root: Path, images_per_label: int, port: int) -> Mirror:
    """The demo's mirror on ``port``, or on a free port when that one is taken."""
    from pipeline.mirror import Mirror  # imported late: --help stays fast

    def make(p: int) -> Mirror:
        return Mirror(root=root, labels=MIRROR_LABELS, images_per_label=images_per_label, faults=True, seed=0,
                      port=p)

    try:
        return make(port).start()
    except (OSError, UserError):  # the mirror says "cannot listen" as a UserError
        print(f"port {port} is taken; using a free port (DVC will see new params and re-run the stages)")
        return make(0).start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.demo",
        description="Run the whole pipeline offline (mirror -> dvc repro -> model, report, package).",
    )
    parser.add_argument("--workspace", type=Path, default=Path("demo-workspace"),
                        help="folder for the demo's DVC project and outputs (default: %(default)s)")
    parser.add_argument("--images-per-label", type=int, default=100, help="mirror size (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="delete the workspace first")
    parser.add_argument("--port", type=int, default=DEMO_PORT,
                        help="mirror port; a fixed one keeps params.yaml, and so DVC's cache, stable across runs "
                             "(default: %(default)s; a free port if it is taken)")
    args = parser.parse_args(argv)
    if args.images_per_label < 10:
        raise UserError("--images-per-label must be at least 10 (the split needs examples of each label)")

    workspace = args.workspace.resolve()
    if args.fresh and workspace.exists():
        shutil.rmtree(workspace)
    started = time.monotonic()
    mirror = start_mirror(workspace / "mirror", args.images_per_label, args.port)
    try:
        params = demo_params(mirror.base_url, mirror.cvdf_url)
        print(f"mirror serving Open Images at {mirror.base_url}")
        prepare_workspace(workspace, params)
        _run([sys.executable, "-m", "dvc", "repro"], workspace)
        commit(workspace, "demo: dvc repro (dvc.lock, metrics, plots, package versions)")
    finally:
        mirror.stop()
    print(summary(workspace, args.images_per_label, urlsplit(mirror.url).port))
    print(f"  took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
