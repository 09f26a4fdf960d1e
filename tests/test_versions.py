"""Versions you can trust, with the real ``git`` and ``dvc`` CLIs, against the local mirror.

One small pipeline (five mirror labels, 12 photos each; a tiny resnet18 for one epoch) in a temporary git
repository laid out as the demo lays out its workspace (the repository's own dvc.yaml and .gitignore, a
copy of ``pipeline/``), its baseline committed, then:

- machine settings (processes, DataLoader workers, the image cache) change what ``dvc status`` sees in
  nothing, and a clone built with other ones gives the dataset package the same top hash, byte for byte,
  with a model package that names it;
- ``dvc exp run -S 'labels=[Pizza,"Hot dog"]'`` publishes under a name of its own, and ``dvc exp show``,
  ``dvc metrics diff``, ``dvc params diff`` and ``dvc plots diff`` compare it with the baseline;
- the README's ``dvc exp show`` command (``demo.COMPARE_COMMAND``) shows both runs' labels, dataset size and
  top-1 in the first 80 columns, as a terminal of that width shows it.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from s3server import isolated_env

from pipeline import demo
from pipeline.core.base.params import load_params
from pipeline.mirror import Mirror

pytestmark = pytest.mark.slow
LABELS = ("Hamburger", "Sandwich", "Submarine sandwich", "Hot dog", "Pizza")  # all the mirror draws
#: results-shaping settings: tiny, so the whole pipeline runs in seconds
TINY = {
    "labels": ["Hamburger", "Sandwich"],
    "select.limit_per_label": 0,
    "download.rate": 0.0,
    "split.train": 0.6, "split.val": 0.2, "split.test": 0.2, "split.min_per_label": 3,
    "train.arch": "resnet18", "train.weights": "none", "train.freeze_epochs": 0, "train.epochs": 1,
    "train.img_size": 32, "train.batch_size": 16, "train.lr": 0.01,
    "evaluate.worst": 2,
}
#: two machines: one download process with one shard and one crop process and no image cache, or two of each
#: (small shards, so both download processes get some) and a cache. DataLoader workers stay 0: they feed training
#: only, which no dataset file depends on, and each costs seconds to start.
RUNTIME_A = {"download_processes": 1, "connections": 2, "crop_processes": 1, "loader_workers": 0, "cache_mb": 0,
             "device": "cpu"}
RUNTIME_B = {"download_processes": 2, "connections": 16, "download_batch_size": 5, "crop_processes": 2,
             "loader_workers": 0, "cache_mb": 64, "device": "cpu"}
DATASET = "openimages/hamburger-sandwich"
EXPERIMENT = "openimages/hot-dog-pizza"


def sh(cwd: Path, env: dict[str, str], *cmd: str, timeout: float = 300) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stdout


def dvc(cwd: Path, env: dict[str, str], *args: str) -> str:
    return sh(cwd, env, sys.executable, "-m", "dvc", *args)


def update_params(repo: Path, section: str, values: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def package_info(repo: Path) -> dict:
    return json.loads((repo / "data/package.json").read_text())


def user_meta(repo: Path, top_hash: str) -> dict:
    """The package metadata of a version in ``repo``'s local registry (its manifest's first line)."""
    first = (repo / "data/quilt-registry/.quilt/packages" / top_hash).read_text().splitlines()[0]
    return json.loads(first)["user_meta"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The repository after ``dvc repro`` with :data:`RUNTIME_A` and a commit of everything (the baseline)."""
    root = tmp_path_factory.mktemp("versions")
    env = isolated_env(
        root / "home", DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(root / "dvc-site"),
        GIT_CONFIG_GLOBAL=str(root / "gitconfig"), GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    with Mirror(root=root / "mirror", labels=LABELS, images_per_label=12, faults=False, seed=0) as mirror, \
            pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            if os.environ.get(key) != value:
                mp.setenv(key, value)
        for key in set(os.environ) - set(env):
            mp.delenv(key)
        overrides = {**TINY, **mirror.params_overrides(), "labels": TINY["labels"],
                     **{f"runtime.{k}": v for k, v in RUNTIME_A.items()}}
        params = load_params(root / "no-params.yaml", overrides).to_dict()
        repo = root / "repo"
        demo.prepare_workspace(repo, params)  # git init, the code, dvc.yaml, .gitignore, params; committed
        dvc(repo, env, "repro")
        sh(repo, env, "git", "add", "-A")
        sh(repo, env, "git", "commit", "-q", "-m", "baseline")
        yield {"root": root, "repo": repo, "env": env, "info": package_info(repo),
               "rev": sh(repo, env, "git", "rev-parse", "HEAD").strip()}


def test_the_baseline_commit_keeps_metrics_plots_and_package_versions(baseline: dict) -> None:
    tracked = sh(baseline["repo"], baseline["env"], "git", "ls-files").splitlines()
    for path in ("dvc.lock", "metrics/train.json", "metrics/eval.json", "plots/confusion.csv",
                 "plots/class_balance.csv", "dvclive/metrics.json", "dvclive/plots/metrics/val_accuracy.tsv",
                 "data/package.json", "pipeline/stages/train/stage.py"):
        assert path in tracked, path
    assert not any(path.startswith(("data/quilt-registry", "data/images/", "models/", "mirror/")) for path in tracked)
    assert baseline["info"]["name"] == DATASET and baseline["info"]["model"]["name"] == DATASET + "-model"


def test_machine_settings_rerun_nothing_and_change_no_hash(baseline: dict) -> None:
    repo, env, info = baseline["repo"], baseline["env"], baseline["info"]
    update_params(repo, "runtime", RUNTIME_B)
    update_params(repo, "download", {"rate": 3.0})  # a promise to the server: how fast, not what
    try:
        assert json.loads(dvc(repo, env, "status", "--json")) == {}  # nothing to re-run
    finally:
        sh(repo, env, "git", "checkout", "--", "params.yaml")

    # Another machine: a clone of the same commit, the same params, other runtime settings, built from scratch.
    clone = baseline["root"] / "clone"
    sh(baseline["root"], env, "git", "clone", "-q", str(repo), str(clone))
    update_params(clone, "runtime", RUNTIME_B)
    dvc(clone, env, "repro")
    other = package_info(clone)
    assert other["name"] == info["name"] and other["top_hash"] == info["top_hash"]
    # (the settings did change how it ran: the first machine streamed the images from the shards, this one
    # cached them)
    data = [json.loads((r / "metrics/train.json").read_text())["data"] for r in (repo, clone)]
    assert data == ["shards", "cached"]
    # Each machine's model package names that one dataset version.
    for where, package in ((repo, info), (clone, other)):
        assert user_meta(where, package["model"]["top_hash"])["dataset"] == {"name": DATASET,
                                                                            "top_hash": info["top_hash"]}


def test_an_edit_to_the_publishing_code_reruns_only_the_package_stage(baseline: dict) -> None:
    repo, env = baseline["repo"], baseline["env"]
    code = repo / "pipeline" / "core" / "publish" / "s3.py"
    code.write_text(code.read_text() + "\n# an edit\n")
    try:
        assert sorted(json.loads(dvc(repo, env, "status", "--json"))) == ["package"]
    finally:
        sh(repo, env, "git", "checkout", "--", "pipeline/core/publish/s3.py")


def shown_data(repo: Path, env: dict[str, str]) -> dict[str, dict]:
    """``dvc exp show --json``'s data (metrics, params, deps, outs) of each commit (by its sha) and experiment
    (by its name)."""
    revs = {}
    for row in json.loads(dvc(repo, env, "exp", "show", "--json")):
        revs[row["rev"]] = row["data"]
        for experiment in row.get("experiments") or []:
            for rev in experiment["revs"]:
                revs[rev["name"]] = rev["data"]
    return revs


@pytest.fixture(scope="module")
def experiment(baseline: dict) -> str:
    """The name of the README's experiment, run on the baseline: ``dvc exp run -S 'labels=[Pizza,"Hot dog"]'``
    (its results stay in the workspace, as ``dvc exp run`` leaves them)."""
    out = dvc(baseline["repo"], baseline["env"], "exp", "run", "-S", 'labels=[Pizza,"Hot dog"]')
    return out.split("Ran experiment(s):", 1)[1].split()[0].rstrip(",")


def test_an_experiment_with_other_labels_compares_with_the_baseline(baseline: dict, experiment: str) -> None:
    repo, env, info, exp = baseline["repo"], baseline["env"], baseline["info"], experiment

    shown = shown_data(repo, env)
    base, trial = shown[baseline["rev"]], shown[exp]
    for data, labels in ((base, ["Hamburger", "Sandwich"]), (trial, ["Pizza", "Hot dog"])):
        assert isinstance(data["metrics"]["metrics/eval.json"]["data"]["top1"], float)
        assert data["metrics"]["dvclive/metrics.json"]["data"]["step"] == 1
        assert data["params"]["params.yaml"]["data"]["labels"] == labels
        # every path DVC shows is the repository's own, relative one
        for path in [*data["deps"], *data["outs"]]:
            assert not os.path.isabs(path) and ".." not in Path(path).parts, path
    assert "pipeline/core/learn" in base["deps"] and "pipeline/stages/train" in base["deps"]

    metrics = json.loads(dvc(repo, env, "metrics", "diff", baseline["rev"], exp, "--all", "--json"))
    top1 = metrics["metrics/eval.json"]["top1"]
    assert isinstance(top1["old"], float) and isinstance(top1["new"], float)
    assert metrics["metrics/eval.json"]["per_class.Pizza.f1"]["old"] is None  # a class only the experiment has
    params = json.loads(dvc(repo, env, "params", "diff", baseline["rev"], exp, "--json"))
    assert set(params["params.yaml"]) == {"labels"}

    plots = json.loads(dvc(repo, env, "plots", "diff", baseline["rev"], exp, "--json"))
    for title in ("Loss per epoch", "dvclive/plots/metrics/val_accuracy.tsv", "plots/confusion.csv"):
        (plot,) = plots["data"][title]
        assert {row["rev"] for row in plot["content"]["data"]["values"]} == {baseline["rev"], exp}, title
    dvc(repo, env, "plots", "diff", baseline["rev"], exp, "-o", "plots-diff")
    page = (repo / "plots-diff/index.html").read_text()
    assert baseline["rev"] in page and exp in page

    # Published under its own name; the baseline's name keeps its labels as its latest.
    trial_info = package_info(repo)
    assert trial_info["name"] == EXPERIMENT and trial_info["model"]["name"] == EXPERIMENT + "-model"
    assert user_meta(repo, trial_info["top_hash"])["dataset"]["labels"] == ["Hot dog", "Pizza"]
    latest = (repo / "data/quilt-registry/.quilt/named_packages" / DATASET / "latest").read_text()
    assert latest == info["top_hash"] and user_meta(repo, latest)["dataset"]["labels"] == ["Hamburger", "Sandwich"]


def first_screen(table: str, columns: int = 80, lines: int = 24) -> list[str]:
    """What a terminal of that size shows first of ``table``: DVC pages it with ``less --chop-long-lines``."""
    return [line[:columns] for line in table.splitlines()[:lines]]


def screen_rows(screen: list[str]) -> dict[str, dict[str, str]]:
    """The table's rows as ``{header: cell}``, by the row's name (``workspace``, the branch, the experiment's
    name): cells are at least two spaces apart (rich's padding), words within a cell one (``['Pizza', 'Hot
    dog']``); the header is the first line that names ``Experiment``."""
    cells = [re.split(r"\s{2,}", line.strip()) for line in screen if line.strip() and set(line.strip()) != {"─"}]
    header = next(row for row in cells if row[0] == "Experiment")
    rows = [dict(zip(header, row)) for row in cells[cells.index(header) + 1:]]
    return {re.sub(r".*\[(.+)\]$", r"\1", row["Experiment"]): row for row in rows}


def test_the_readme_exp_show_shows_labels_dataset_size_and_top1_on_the_first_screen(
        baseline: dict, experiment: str) -> None:
    repo, env = baseline["repo"], baseline["env"]
    assert demo.COMPARE_COMMAND in (demo.REPO / "README.md").read_text()
    assert demo.COMPARE_COMMAND in demo.summary(repo, 12, 1)  # the demo's last lines suggest it too
    command = shlex.split(demo.COMPARE_COMMAND)
    assert command[0] == "dvc"
    table = dvc(repo, env, *command[1:])  # no terminal: the whole table, as DVC hands it to the pager
    assert max(map(len, table.splitlines())) <= 80, table  # so a plain 80-column terminal squeezes nothing
    rows = screen_rows(first_screen(table))
    branch = sh(repo, env, "git", "rev-parse", "--abbrev-ref", "HEAD").strip()
    shown = shown_data(repo, env)
    for name, data in ((branch, shown[baseline["rev"]]), (experiment, shown[experiment])):
        metrics = {path: file["data"] for path, file in data["metrics"].items()}
        size, top1 = metrics["metrics/dataset.json"], metrics["metrics/eval.json"]["top1"]
        assert size["images"] == size["train"] + size["val"] + size["test"] > 0
        row = rows[name]
        assert set(row) == {"Experiment", "images", "top1", "labels"}, table
        assert (row["labels"], int(row["images"])) == (str(data["params"]["params.yaml"]["data"]["labels"]),
                                                       size["images"]), table
        assert float(row["top1"]) == pytest.approx(top1, abs=1e-5), table
    assert rows[branch]["labels"] != rows[experiment]["labels"]
