"""A dataset's top hash is its content and its decisions, never the weather of the run that made it.

Two fresh workspaces of one commit and one params.yaml run metadata -> select -> download -> crop -> clean
-> split -> shards -> package against one mirror whose photos have transient faults (429 with Retry-After,
500, a stalled body, a cut body: each only on a photo's first requests). The first run meets every fault
and retries; the second, after them, gets every photo at once. Same photos, same decisions: one top hash.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from s3server import isolated_env
from trainkit import needs_offline_weights

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.mirror import Mirror
from pipeline.stages.audit.__main__ import main as audit_main
from pipeline.stages.clean.__main__ import main as clean_main
from pipeline.stages.crop.__main__ import main as crop_main
from pipeline.stages.download.__main__ import main as download_main
from pipeline.stages.metadata.__main__ import main as metadata_main
from pipeline.stages.select.__main__ import main as select_main
from pipeline.stages.shards.__main__ import main as shards_main
from pipeline.stages.split.__main__ import main as split_main

#: the stages that make the dataset, in dvc.yaml's order (package runs as a command, in its own process)
DATASET_STAGES = (metadata_main, select_main, download_main, crop_main, clean_main, audit_main, split_main,
                  shards_main)
#: faults that only hit a photo's first requests: a retry gets the photo
TRANSIENT = ("rate_limited", "server_error", "slow", "truncated")


@pytest.fixture(scope="module")
def faulty_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """Every fault kind on its own photo, four plain photos per label, small pictures."""
    with Mirror(root=tmp_path_factory.mktemp("faulty-mirror"), labels=("Hamburger", "Sandwich"), images_per_label=4,
                size=(96, 72), faults=True, seed=0) as m:
        yield m


def params(mirror: Mirror) -> dict:
    """Small settings, and patience in seconds: a stalled body is cut after 1 s and asked for again."""
    return {
        "labels": ["Hamburger", "Sandwich"],
        "source": {"version": "v6", "base_url": mirror.base_url, "cvdf_url": mirror.cvdf_url, "images": "flickr"},
        "download": {"rate": 0.0},
        "crop": {"min_side": 8},
        "split": {"train": 0.6, "val": 0.2, "test": 0.2, "min_per_label": 2},
        "shards": {"max_images": 16},
        "package": {"name": "tests/transient", "registry": ""},
        "runtime": {"download_processes": 1, "connections": 8, "crop_processes": 1, "read_timeout": 1.0,
                    "connect_timeout": 2.0, "retries": 3, "backoff": 0.01, "max_backoff": 2.0, "stall_window": 0.5},
    }


def build_dataset(workspace: Path, settings: dict, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, int]]:
    """Run the dataset's stages in a fresh ``workspace``; the dataset's top hash and each photo's attempts."""
    workspace.mkdir()
    (workspace / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    with monkeypatch.context() as mp:
        mp.chdir(workspace)
        for main in DATASET_STAGES:
            assert run_cli(main, []) == 0, main.__module__
        manifest = pq.read_table(paths.IMAGES_MANIFEST, columns=["ImageID", "attempts"]).to_pydict()
        attempts = dict(zip(manifest["ImageID"], manifest["attempts"]))
    published = subprocess.run([sys.executable, "-m", "pipeline.stages.package"], cwd=workspace, capture_output=True,
                               text=True, timeout=120, env=isolated_env(workspace / "home"), check=False)
    assert published.returncode == 0, published.stderr[-3000:]
    return json.loads((workspace / "data/package.json").read_text())["top_hash"], attempts


@needs_offline_weights  # the audit embeds every crop
def test_transient_faults_do_not_change_the_dataset_top_hash(faulty_mirror: Mirror, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    truth = faulty_mirror.truth
    transient = set(truth.loc[truth["fault"].isin(TRANSIENT), "ImageID"])
    faulty_mirror.reset_faults()  # the first run meets every transient fault ...
    first, first_attempts = build_dataset(tmp_path / "first", params(faulty_mirror), monkeypatch)
    # ... the second comes after them
    second, second_attempts = build_dataset(tmp_path / "second", params(faulty_mirror), monkeypatch)
    retried = {image for image in transient if first_attempts.get(image, 0) > 1}
    assert {"rate_limited", "server_error"} <= set(truth.loc[truth["ImageID"].isin(retried), "fault"])
    assert all(second_attempts[image] == 1 for image in retried)  # two runs that went differently ...
    assert first == second  # ... to one dataset
