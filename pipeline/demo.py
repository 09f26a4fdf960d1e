"""``python -m pipeline.demo``: the whole pipeline, offline, on the bundled mini mirror.

It starts the local Open Images mirror (:mod:`pipeline.mirror`) on 127.0.0.1, writes a demo
``params.yaml`` pointing ``source.base_url`` at it, and runs the real DVC pipeline (``dvc repro``) in a
workspace folder: the same stages, code and ``dvc.yaml`` a user runs against the real Open Images, only
smaller. Code dependencies in ``dvc.yaml`` are rewritten to point at this checkout, so editing a stage's
code and re-running the demo re-runs that stage and what follows, exactly as ``dvc repro`` does.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipeline.core import paths
from pipeline.core.errors import PipelineFailure, UserError, run_cli
from pipeline.core.params import load_params

if TYPE_CHECKING:
    from pipeline.mirror import Mirror

DEMO_PORT = 8754
REPO = Path(__file__).resolve().parent.parent
CODE_PREFIX = "pipeline/"

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
    "package": {"name": "openimages/demo-hamburger-sandwich", "registry": ""},
    "runtime": {"connections": 16, "retries": 3, "backoff": 0.2, "max_backoff": 2.0, "read_timeout": 5.0,
                "shard_size": 50},
}


def demo_params(base_url: str, cvdf_url: str) -> dict:
    """A complete params.yaml (DVC needs every param a stage names) with the demo's settings on top."""
    overrides = {f"{section}.{key}": value for section, values in DEMO_PARAMS.items() if isinstance(values, dict)
                 for key, value in values.items()}
    overrides.update({"labels": DEMO_PARAMS["labels"], "source.base_url": base_url, "source.cvdf_url": cvdf_url})
    return load_params(Path("/nonexistent/params.yaml"), overrides).to_dict()


def workspace_dvc_yaml(repo_dvc_yaml: Path, repo: Path) -> dict:
    """The repo's ``dvc.yaml`` with code deps (``pipeline/...``) made absolute paths into ``repo``."""
    spec = yaml.safe_load(repo_dvc_yaml.read_text())
    for stage in spec["stages"].values():
        stage["deps"] = [str(repo / dep) if dep.startswith(CODE_PREFIX) else dep for dep in stage.get("deps", [])]
    return spec


def prepare_workspace(workspace: Path, params: dict) -> None:
    """Write params.yaml and dvc.yaml into ``workspace`` and make it a DVC project (no git needed)."""
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (workspace / "dvc.yaml").write_text(yaml.safe_dump(workspace_dvc_yaml(REPO / "dvc.yaml", REPO), sort_keys=False))
    if not (workspace / ".dvc").exists():
        _run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], workspace)
        _run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], workspace)


def _env() -> dict[str, str]:
    """Stages run as ``python -m ...``: make ``python`` this interpreter, and keep DVC and Quilt offline."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("QUILT_DISABLE_USAGE_METRICS", "true")
    return env


def _run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=_env())
    if result.returncode != 0:
        raise PipelineFailure(f"'{' '.join(cmd[2:] if cmd[1] == '-m' else cmd)}' failed with exit code {result.returncode}")


def summary(workspace: Path) -> str:
    """Where the user finds what the pipeline made, with the headline numbers."""
    lines = [f"demo finished in workspace {workspace}"]
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
        ("evaluation metrics", paths.METRICS_DIR / "eval.json"),
        ("dataset report", paths.REPORTS_DIR / "dataset" / "index.html"),
        ("evaluation report", paths.REPORTS_DIR / "evaluate"),
        ("package info", paths.PACKAGE_INFO),
    ]:
        lines.append(f"  {label + ':':20s}{workspace / rel}")
    if package_info.exists():
        info = json.loads(package_info.read_text())
        registry = workspace / info["registry"] if "://" not in info["registry"] else info["registry"]
        lines.append(f"  package {info['name']} @ {info['top_hash'][:12]}; pull it with:")
        lines.append(f"    python -m pipeline.pull {info['name']} --registry {registry} --dest DIR")
    return "\n".join(lines)


def start_mirror(root: Path, images_per_label: int, port: int) -> Mirror:
    """The demo's mirror on ``port``, or on a free port when that one is taken."""
    from pipeline.mirror import Mirror  # imported late: --help stays fast

    def make(p: int) -> Mirror:
        return Mirror(root=root, labels=tuple(DEMO_PARAMS["labels"]), images_per_label=images_per_label,
                      faults=True, seed=0, port=p)

    try:
        return make(port).start()
    except OSError:
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
    finally:
        mirror.stop()
    print(summary(workspace))
    print(f"  took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
