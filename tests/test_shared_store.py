"""Workspaces that share one object store (``runtime.store``) never touch each other's work.

A team, or ``dvc exp run --queue`` (``runtime`` is tracked by no stage, so every queued experiment gets the
same store), runs the stages of several workspaces against one store. Shown here with moto as S3 and the
stages as real subprocesses (the local engine: no Dask needed): two workspaces with other labels running
download, crop and clean at once, one of them stopped at an exact point of its crop (just before it copies
its crops home) while the other runs its crop and clean from start to end; a workspace of Flickr originals
and one of CVDF copies of the same ImageIDs, each keeping its own bytes; a crop run killed with SIGKILL,
whose leftovers the next run on this machine removes while another machine's stay; and ``memory://`` (one
process's memory, which no worker shares) refused in one line before any work.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import chdir
from pathlib import Path

import pytest
import yaml
from download_inputs import write_boxes_and_images
from s3server import GateProxy, S3Server, aws_env

from pipeline.core.base import paths
from pipeline.core.base.errors import UserError, run_cli
from pipeline.core.base.io import read_parquet
from pipeline.core.base.params import RuntimeParams, load_params
from pipeline.mirror import Mirror
from pipeline.stages.crop.__main__ import main as crop_main
from pipeline.stages.download.__main__ import main as download_main

REPO = Path(__file__).resolve().parent.parent
BUCKET, ROOT = "shared", "team"
STORE = f"s3://{BUCKET}/{ROOT}"
#: request lines: a crop put in the store, and a listing under <store>/crops (after a put: the crop stage
#: about to copy its crops home)
CROP_PUT = rb"^PUT /shared/team/crops/"
CROPS_LISTING = rb"^GET /shared\?\S*prefix=team%2Fcrops"
STAGE_TIMEOUT = 180


@pytest.fixture(scope="module")
def store(s3_server: S3Server) -> S3Server:
    s3_server.create_bucket(BUCKET)
    return s3_server


def make_workspace(root: Path, mirror: Mirror, labels: list[str], images: str = "flickr") -> Path:
    """A workspace whose selection holds the boxes of ``labels``, with the shared store in its params."""
    root.mkdir()
    write_boxes_and_images(mirror, root, labels)
    params = {"labels": labels,
              "source": {"base_url": mirror.base_url, "cvdf_url": mirror.cvdf_url, "images": images},
              "download": {"rate": 0},
              "runtime": {"store": STORE, "download_processes": 1, "crop_processes": 1, "connections": 4,
                          "download_batch_size": 5, "retries": 2, "backoff": 0.05}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def stage(root: Path, name: str, endpoint: str, timeout: float = STAGE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline.stages.<name>`` in ``root``, talking to the store at ``endpoint``."""
    env = aws_env(endpoint, root / ".home", PYTHONPATH=str(REPO), PIPELINE_PROGRESS_SECONDS="60")
    return subprocess.run([sys.executable, "-m", f"pipeline.stages.{name}"], cwd=root, env=env, text=True,
                          capture_output=True, timeout=timeout)


def run_stages(root: Path, names: list[str], endpoint: str) -> list[tuple[str, int, str]]:
    """Run the stages one after the other, stopping at the first that fails: ``(stage, exit code, stderr)``."""
    done = []
    for name in names:
        result = stage(root, name, endpoint)
        done.append((name, result.returncode, result.stderr.strip()))
        if result.returncode:
            break
    return done


def assert_all_succeeded(runs: list[tuple[str, int, str]], names: list[str]) -> None:
    assert [(name, code) for name, code, _ in runs] == [(name, 0) for name in names], runs


def store_md5s(s3: S3Server, folder: str) -> dict[str, str]:
    """``{md5 of the body: key}`` of every object under ``<ROOT>/<folder>/`` in the bucket."""
    client = s3.client()
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{ROOT}/{folder}/").get("Contents", [])
    return {hashlib.md5(client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()).hexdigest(): o["Key"]
            for o in listing}


def store_keys(s3: S3Server, folder: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{ROOT}/{folder}/").get("Contents", [])
    return sorted(o["Key"] for o in listing)


def assert_crops_are_whole(root: Path) -> None:
    """Every ``ok`` crop of the manifest has its file in this workspace's data/crops, and there is no crop
    there that the manifest does not list."""
    crops = read_parquet(root / paths.CROPS_MANIFEST)
    ok = set(crops.loc[crops["status"] == "ok", "crop_path"])
    files = {str(p.relative_to(root / paths.CROPS_DIR)) for p in (root / paths.CROPS_DIR).rglob("*.jpg")}
    assert ok and not ok - files, f"{len(ok - files)} ok crop(s) of {root.name} have no file"
    assert files == ok, f"{root.name}'s data/crops holds {len(files - ok)} crop(s) of another run"


def assert_clean_found_none_corrupt(root: Path) -> None:
    """Clean read every crop whole (a missing file would read as corrupt; the clean mirror has no bad photo)."""
    cleaned = read_parquet(root / paths.CLEAN_MANIFEST)
    corrupt = cleaned[cleaned["reject_reason"] == "corrupt"]
    assert corrupt.empty, f"clean calls {len(corrupt)} crop(s) of {root.name} corrupt: {list(corrupt['detail'])[:2]}"


def assert_photos_kept(s3: S3Server, root: Path) -> None:
    """The store still holds, byte for byte, every photo this workspace's manifest keeps (by its md5)."""
    downloads = read_parquet(root / paths.IMAGES_MANIFEST)
    kept = set(downloads.loc[downloads["path"] != "", "md5"])
    missing = kept - set(store_md5s(s3, "images"))
    assert kept and not missing, f"{len(missing)} photo(s) of {root.name} are gone from the store or changed"


@pytest.fixture
def gate(store: S3Server) -> Iterator[GateProxy]:
    """A proxy to the store that stops a crop run just before it copies its crops home."""
    proxy = GateProxy(store.port, after=CROP_PUT, hold=CROPS_LISTING)
    try:
        yield proxy
    finally:
        proxy.close()


def test_two_workspaces_cropping_at_once_each_keep_all_their_crops(store, gate, clean_mirror, tmp_path):
    first = make_workspace(tmp_path / "hamburgers", clean_mirror, ["Hamburger"])
    second = make_workspace(tmp_path / "sandwiches", clean_mirror, ["Sandwich"])
    names = ["download", "crop", "clean"]
    with ThreadPoolExecutor(2) as pool:  # both download at once; the first is stopped before copying its crops
        held = pool.submit(run_stages, first, names, gate.endpoint)
        second_runs = run_stages(second, ["download"], store.endpoint)
        while not gate.held.wait(0.2) and not held.done():
            pass
        assert gate.held.is_set(), f"the first workspace never got to copy its crops: {held.result()}"
        second_runs += run_stages(second, ["crop"], store.endpoint)  # meanwhile: the second crops from start to end
        gate.release()
        second_runs += run_stages(second, ["clean"], store.endpoint)
        first_runs = held.result()

    assert_all_succeeded(first_runs, names)
    assert_all_succeeded(second_runs, names)
    for root in (first, second):
        assert_crops_are_whole(root)
        assert_clean_found_none_corrupt(root)
        assert_photos_kept(store, root)
    assert not store_keys(store, "crops"), "each run removes its own crops from the store once copied home"


def test_flickr_originals_and_cvdf_copies_of_the_same_photos_keep_their_own_bytes(store, clean_mirror, tmp_path):
    flickr = make_workspace(tmp_path / "flickr", clean_mirror, ["Hamburger", "Sandwich"], images="flickr")
    cvdf = make_workspace(tmp_path / "cvdf", clean_mirror, ["Hamburger", "Sandwich"], images="cvdf")
    assert_all_succeeded(run_stages(flickr, ["download"], store.endpoint), ["download"])
    with ThreadPoolExecutor(2) as pool:  # the copies come while the originals are cropped
        runs = [pool.submit(run_stages, cvdf, ["download"], store.endpoint),
                pool.submit(run_stages, flickr, ["crop"], store.endpoint)]
        assert_all_succeeded(runs[0].result(), ["download"])
        assert_all_succeeded(runs[1].result(), ["crop"])
    for root in (flickr, cvdf):
        assert_photos_kept(store, root)
    clean_mirror.clear_requests()
    with ThreadPoolExecutor(2) as pool:  # the copies are cropped while the originals' download runs again
        runs = [pool.submit(run_stages, cvdf, ["crop"], store.endpoint),
                pool.submit(run_stages, flickr, ["download"], store.endpoint)]
        assert_all_succeeded(runs[0].result(), ["crop"])
        assert_all_succeeded(runs[1].result(), ["download"])
    assert not [r for r in clean_mirror.requests if r.path.startswith("/flickr/")], \
        "a re-run finds every photo it has in one listing of the store"

    ours, theirs = (read_parquet(root / paths.IMAGES_MANIFEST).set_index("ImageID")["md5"] for root in (flickr, cvdf))
    assert (ours != theirs).all(), "the mirror's CVDF copies are other bytes than its originals"
    crops = [read_parquet(root / paths.CROPS_MANIFEST).query("status == 'ok'")["crop_path"] for root in (flickr, cvdf)]
    assert list(crops[0]) == list(crops[1]) and len(crops[0])
    same = [p for p in crops[0] if (flickr / paths.CROPS_DIR / p).read_bytes() == (cvdf / paths.CROPS_DIR / p).read_bytes()]
    assert not same, f"{len(same)} crop(s) of the originals were cut from the CVDF copies (or the other way round)"


def test_a_killed_crop_run_leaves_nothing_the_next_run_here_keeps_but_another_machines_stays(store, gate,
                                                                                            clean_mirror, tmp_path):
    root = make_workspace(tmp_path / "killed", clean_mirror, ["Hamburger"])
    assert_all_succeeded(run_stages(root, ["download"], store.endpoint), ["download"])
    elsewhere = f"{ROOT}/crops/other-host-0123abcd.4242.c0ffee00/Hamburger/x.jpg"  # another machine's live run
    store.client().put_object(Bucket=BUCKET, Key=elsewhere, Body=b"not ours")
    try:
        env = aws_env(gate.endpoint, root / ".home", PYTHONPATH=str(REPO))
        crop = subprocess.Popen([sys.executable, "-m", "pipeline.stages.crop"], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not gate.held.wait(0.2) and crop.poll() is None:
                pass
            assert gate.held.is_set(), f"the crop run ended ({crop.returncode}) before copying its crops"
            assert [k for k in store_keys(store, "crops") if k != elsewhere], "its crops were in the store"
        finally:
            crop.kill()  # SIGKILL: no clean-up of its own
            crop.wait(timeout=30)
        gate.release()

        assert_all_succeeded(run_stages(root, ["crop"], store.endpoint), ["crop"])
        assert store_keys(store, "crops") == [elsewhere], "the killed run's crops go; another machine's stay"
    finally:
        store.client().delete_object(Bucket=BUCKET, Key=elsewhere)
    assert_crops_are_whole(root)


@pytest.mark.parametrize("main", [download_main, crop_main], ids=["download", "crop"])
def test_a_store_no_other_process_can_see_is_refused_in_one_line_before_any_work(main, clean_mirror, tmp_path,
                                                                                  capsys):
    root = make_workspace(tmp_path / "memory", clean_mirror, ["Hamburger"])
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["runtime"]["store"] = "memory://team"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    clean_mirror.clear_requests()
    with chdir(root):
        assert run_cli(main, []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runtime.store cannot be 'memory://team'" in err[0], err
    assert "one process" in err[0], "the line says why"
    assert not clean_mirror.requests
    assert not (root / paths.IMAGES_MANIFEST).exists()


SHARED = ["s3://bucket/team", "s3a://bucket/team", "gs://bucket/team", "gcs://bucket/team", "az://container/team",
          "abfs://container/team", "abfss://container@account/team"]
NOT_SHARED = {  # each with the words that say why
    "memory://team": "one process",
    "file:///mnt/shared": "a folder on one machine",
    "local:///mnt/shared": "a folder on one machine",
    "https://bucket.example.com/x": "read-only",
    "sftp://host/x": "not an object store",
    "hdfs://namenode/x": "not an object store",
    "simplecache::s3://bucket/x": "must be empty",
    "/mnt/shared": "must be empty",
}


def test_only_object_stores_every_machine_shares_are_accepted_anything_else_in_one_line_saying_why(tmp_path):
    assert [RuntimeParams(store=url + "/").store for url in SHARED] == SHARED
    for url, why in NOT_SHARED.items():
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"runtime": {"store": url}}))
        with pytest.raises(UserError) as info:
            load_params(tmp_path / "params.yaml")
        message = str(info.value)
        assert "runtime.store " in message and why in message and "\n" not in message, message
