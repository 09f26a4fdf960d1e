"""The download stage against the local mirror over real HTTP: every fault, resume after kill -9, CVDF.

The selection is built from the mirror's own image tables (``download_inputs``), with every image listed
twice, as an image with two selected boxes is.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from download_inputs import write_selection

from pipeline.core.base.errors import run_cli
from pipeline.core.base.io import read_parquet, write_parquet
from pipeline.core.base.status import KEPT_ON_DISK
from pipeline.core.images.placeholder import PLACEHOLDER_MD5S
from pipeline.mirror import Mirror
from pipeline.stages.download import batches
from pipeline.stages.download.__main__ import main as download_main
from pipeline.stages.download.verify import md5_hex_from_base64, sniff_extension, verify

REPO = Path(__file__).resolve().parent.parent
IMAGES = Path("data/images")
FAST_RUNTIME = {"connections": 8, "retries": 3, "backoff": 0.05, "max_backoff": 2.0, "read_timeout": 1.0,
                "download_batch_size": 16}


def fast(download: dict | None = None, **runtime: object) -> dict:
    """params.yaml sections for a quick download from the mirror: no rate limit, short waits."""
    return {"download": {"rate": 0, **(download or {})}, "runtime": {**FAST_RUNTIME, **runtime}}


def run_download() -> int:
    return run_cli(download_main, [])


def files_of(image_id: str) -> list[Path]:
    return sorted(IMAGES.glob(f"{image_id}.*"))


def requested_paths(m: Mirror) -> Counter[str]:
    return Counter(r.path for r in m.requests if r.method == "GET")


# ---------------------------------------------------------------------------------------------------------
# Every fault the mirror injects, Flickr originals


def test_every_fault_ends_in_its_expected_status(mirror, workspace):
    workspace.write_params({**mirror.params_overrides(), **fast()})
    table = write_selection(mirror).set_index("ImageID")
    mirror.reset_faults()
    mirror.clear_requests()

    assert run_download() == 0

    manifest = read_parquet(IMAGES / "manifest.parquet")
    truth = mirror.truth.set_index("ImageID")
    assert manifest["ImageID"].is_unique and set(manifest["ImageID"]) == set(truth.index)
    got = manifest.set_index("ImageID")
    mismatched = {i: (truth.at[i, "fault"], got.at[i, "status"], got.at[i, "reason"])
                  for i in truth.index if got.at[i, "status"] != truth.at[i, "expected_status"]}
    assert not mismatched

    seen = requested_paths(mirror)
    for image_id, row in truth.iterrows():
        rec, path = got.loc[image_id], urlsplit(row["OriginalURL"]).path
        kept = rec["status"] in KEPT_ON_DISK
        assert bool(rec["path"]) == kept
        if kept:  # the body on disk, named from the ImageID, extension from the bytes, md5 as recorded
            assert files_of(image_id) == [IMAGES / rec["path"]]
            body = (IMAGES / rec["path"]).read_bytes()
            assert hashlib.md5(body).hexdigest() == rec["md5"] and len(body) == rec["bytes"]
            assert rec["path"] == f"{image_id}.{sniff_extension(body)}"
        else:
            assert files_of(image_id) == []
        if rec["status"] == "ok":  # Flickr originals: exactly the bytes the image table describes
            assert rec["md5"] == md5_hex_from_base64(table.at[image_id, "OriginalMD5"])
        fault = row["fault"]
        if fault == "bad_url":
            assert seen[path] == 0 and rec["attempts"] == 0
        elif fault in ("not_found", "gone", "forbidden", "placeholder", "not_image", "changed"):
            assert seen[path] == 1, f"{fault} must not be retried"
        elif fault in ("rate_limited", "server_error"):
            assert seen[path] == 3 and rec["attempts"] == 3
        elif fault in ("slow", "truncated"):
            assert seen[path] == 2 and rec["attempts"] == 2
        else:  # each image fetched once, though it has two selected boxes
            assert seen[path] == 1 and rec["attempts"] == 1

    placeholder = truth.index[truth["fault"] == "placeholder"][0]
    assert got.at[placeholder, "final_url"] == mirror.placeholder_url
    assert got.at[placeholder, "path"].endswith(".png")
    assert got.at[truth.index[truth["fault"] == "png"][0], "path"].endswith(".png")
    assert {got.at[i, "http_status"] for i in truth.index[truth["fault"] == "not_found"]} == {404}

    # Retry-After: 1 was honoured: the retries of the 429'd photo came at least a second apart
    limited = urlsplit(truth.loc[truth["fault"] == "rate_limited", "OriginalURL"].iloc[0]).path
    times = [r.t for r in mirror.requests if r.path == limited]
    assert all(b - a >= 0.95 for a, b in zip(times, times[1:]))

    # nothing but the kept files (and the batch parts) in the folder
    kept_files = {p for p in got["path"] if p}
    assert {p.name for p in IMAGES.iterdir() if p.is_file()} == kept_files | {"manifest.parquet"}

    # a re-run asks the server nothing: every answer is final and every kept file is in place
    mirror.clear_requests()
    before = (IMAGES / "manifest.parquet").read_bytes()
    assert run_download() == 0
    assert requested_paths(mirror) == Counter()
    assert (IMAGES / "manifest.parquet").read_bytes() == before


def test_rerun_fetches_failed_and_deleted_images_again(clean_mirror, workspace):
    workspace.write_params({**clean_mirror.params_overrides(), **fast()})
    write_selection(clean_mirror, boxes_per_image=1)
    assert run_download() == 0
    manifest = read_parquet(IMAGES / "manifest.parquet")
    deleted, shortened, failed = manifest["path"].iloc[:3]
    (IMAGES / deleted).unlink()
    (IMAGES / shortened).write_bytes(b"\xff\xd8\xff")  # e.g. a power cut after the rename
    part = batches.part_path(IMAGES / "batches", 0)
    table = read_parquet(part)
    table.loc[table["path"] == failed, ["status", "path"]] = ["failed", ""]
    write_parquet(table, part)

    clean_mirror.clear_requests()
    assert run_download() == 0
    redone = manifest[manifest["path"].isin([deleted, shortened, failed])]
    assert requested_paths(clean_mirror) == Counter(urlsplit(u).path for u in redone["url"])
    timing = ["attempts"]
    assert read_parquet(IMAGES / "manifest.parquet").drop(columns=timing).equals(manifest.drop(columns=timing))


def test_a_workspace_of_the_old_layout_keeps_its_records(clean_mirror, workspace):
    # the batches' parts once lived in data/images/shards: a re-run after the rename asks the server for nothing
    workspace.write_params({**clean_mirror.params_overrides(), **fast()})
    write_selection(clean_mirror, boxes_per_image=1)
    assert run_download() == 0
    (IMAGES / "batches").rename(IMAGES / "shards")
    clean_mirror.clear_requests()
    assert run_download() == 0
    assert requested_paths(clean_mirror) == Counter()
    assert not (IMAGES / "shards").exists()


def test_run_batch_is_a_plain_function_any_executor_can_map(clean_mirror, tmp_path):
    """What Dask distributed would do with it: ship (rows, settings) to other processes, get parts back."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.core.base.params import load_params
    from pipeline.stages.download.runner import BatchSettings, run_batch
    from pipeline.stages.download.stage import images_table

    params = load_params(tmp_path / "none.yaml", overrides={**clean_mirror.params_overrides(), "download.rate": 0})
    images, _ = images_table(pa.Table.from_pandas(write_selection(clean_mirror, where=tmp_path / "selected.parquet")),
                             params.source)
    plan = batches.plan_batches(images, size=len(images) // 2 + 1)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        settings = BatchSettings.from_params(params)
        parts = list(pool.map(run_batch, [s.images for s in plan], [settings] * 2, [tmp_path] * 2,
                              [batches.journal_path(tmp_path, s.index) for s in plan]))
    merged = pa.concat_tables(parts).to_pandas()
    assert sorted(merged["ImageID"]) == sorted(image.ImageID for image in images) and (merged["status"] == "ok").all()
    assert all((tmp_path / p).is_file() for p in merged["path"])


def test_two_processes_give_the_same_manifest_as_one(clean_mirror, workspace):
    """Same rows, same order, same files: the manifest is the same bytes."""
    write_selection(clean_mirror)
    manifests = []
    for processes in (1, 2):
        shutil.rmtree(IMAGES, ignore_errors=True)
        workspace.write_params({**clean_mirror.params_overrides(),
                                **fast(download_batch_size=7, download_processes=processes)})
        assert run_download() == 0
        manifests.append(pq.read_table(IMAGES / "manifest.parquet"))
    one, two = manifests
    assert len(one) > 2 * 7 and (one.column("status").to_pylist() == ["ok"] * len(one))
    assert one.equals(two), "the manifest depends on the number of processes"


def test_records_from_other_processes_reach_the_progress_callback(clean_mirror, tmp_path):
    from pipeline.core.base.params import load_params
    from pipeline.core.compute.engine import open_engine
    from pipeline.stages.download.runner import BatchSettings
    from pipeline.stages.download.stage import _fetch, images_table

    params = load_params(tmp_path / "none.yaml", overrides={**clean_mirror.params_overrides(), "download.rate": 0})
    images, _ = images_table(pa.Table.from_pandas(write_selection(clean_mirror, where=tmp_path / "selected.parquet")),
                             params.source)
    plan = batches.plan_batches(images, size=5)
    jobs = [(s.index, s.images) for s in plan]
    seen: list[str] = []
    finished: list[int] = []
    with open_engine(params.runtime, 2, "download") as engine:
        tables = _fetch(engine, jobs, BatchSettings.from_params(params), str(tmp_path), tmp_path,
                        lambda message: seen.append(message["record"]["ImageID"]), lambda job, _: finished.append(job))
    assert sorted(seen) == sorted(image.ImageID for image in images)
    assert sorted(finished) == list(range(len(plan)))
    assert [t.column("ImageID").to_pylist() for t in tables] == [sorted(i.ImageID for i in s.images) for s in plan]


# ---------------------------------------------------------------------------------------------------------
# CVDF copies, limits, bad input


def test_cvdf_source_fetches_the_resized_copies(clean_mirror, workspace):
    workspace.write_params({**clean_mirror.params_overrides(), "source": {"images": "cvdf"}, **fast()})
    write_selection(clean_mirror)
    clean_mirror.clear_requests()
    assert run_download() == 0
    manifest = read_parquet(IMAGES / "manifest.parquet")
    truth = clean_mirror.truth.set_index("ImageID")
    assert (manifest["status"] == "ok").all() and len(manifest) == len(truth)
    assert set(manifest["url"]) == set(truth["cvdf_url"])
    assert set(requested_paths(clean_mirror)) == {urlsplit(u).path for u in truth["cvdf_url"]}
    for rec in manifest.itertuples():
        served = clean_mirror.root / "cvdf" / rec.Subset / f"{rec.ImageID}.jpg"
        if served.exists():  # the mirror's own copy, byte for byte
            assert (IMAGES / rec.path).read_bytes() == served.read_bytes()


def test_bodies_over_max_bytes_are_refused_and_not_kept(clean_mirror, workspace):
    workspace.write_params({**clean_mirror.params_overrides(), **fast({"max_bytes": 1024})})
    write_selection(clean_mirror)
    assert run_download() == 0
    manifest = read_parquet(IMAGES / "manifest.parquet")
    assert set(manifest["status"]) == {"too_large"}
    assert not list(IMAGES.glob("*.jpg"))


def test_unreachable_server_is_a_failure_not_a_success(clean_mirror, workspace, capsys):
    workspace.write_params({**clean_mirror.params_overrides(), **fast(retries=1)})
    images = write_selection(clean_mirror, boxes_per_image=1).head(4)
    dead = "http://127.0.0.1:9"  # the discard port: connection refused
    images["OriginalURL"] = [dead + urlsplit(u).path for u in images["OriginalURL"][:3]] + ["ftp://x/y.jpg"]
    write_parquet(images, "data/selected.parquet")
    assert run_download() == 1  # the bad URL, never requested, does not make the run a success
    assert "all 3 download(s) failed" in capsys.readouterr().err
    assert sorted(read_parquet(IMAGES / "manifest.parquet")["status"]) == ["bad_url"] + ["failed"] * 3


def test_bad_image_ids_never_name_a_file(clean_mirror, workspace, capsys):
    workspace.write_params({**clean_mirror.params_overrides(), **fast()})
    images = write_selection(clean_mirror, boxes_per_image=1).head(2).copy()
    images.loc[images.index[0], "ImageID"] = "../../escape"
    write_parquet(images, "data/selected.parquet")
    assert run_download() == 0
    assert "skipped 1 image(s)" in capsys.readouterr().err
    assert list(read_parquet(IMAGES / "manifest.parquet")["ImageID"]) == [images["ImageID"].iloc[1]]
    assert not list(workspace.path.rglob("escape*"))


def test_missing_selection_or_column_is_bad_input(workspace, capsys):
    assert run_download() == 2
    assert "selected.parquet not found" in capsys.readouterr().err
    write_parquet(pd.DataFrame({"ImageID": ["0123456789abcdef"]}), "data/selected.parquet")
    assert run_download() == 2
    assert "missing column(s) Subset" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# kill -9 and resume, as a real subprocess


@pytest.mark.parametrize("processes, workers", [(1, 4), (2, 2)])  # 4 requests in flight either way
def test_kill_9_then_rerun_fetches_only_what_is_missing(tmp_path, workspace, processes, workers):
    """With processes, the lanes must die with the stage: one left running would fetch beside the re-run."""
    with Mirror(root=tmp_path / "mirror", labels=("Hamburger", "Sandwich"), images_per_label=40, size=(96, 72),
                faults=False, seed=3, latency=0.1) as m:
        workspace.write_params({**m.params_overrides(),
                                **fast(connections=workers, download_batch_size=25, download_processes=processes)})
        table = write_selection(m)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.stages.download"], cwd=workspace.path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(batches.load_records(IMAGES / "batches")) < 35 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)  # the server logs a request when it has answered: let the killed run's in-flight ones end
        assert not (IMAGES / "manifest.parquet").exists(), "killed too late: the run had finished"
        first_run = m.requests
        recorded = batches.load_records(IMAGES / "batches")
        assert 35 <= len(recorded) < len(table)
        mid_way = [j for j in (IMAGES / "batches").glob("*.jsonl") if not j.with_suffix(".parquet").exists()]
        assert mid_way, "killed between batches: no batch was mid-way"
        want_md5 = dict(zip(table["ImageID"], table["OriginalMD5"].map(md5_hex_from_base64)))
        for file in IMAGES.glob("*.jpg"):  # under its real name only when complete
            assert hashlib.md5(file.read_bytes()).hexdigest() == want_md5[file.stem]

        m.clear_requests()
        assert subprocess.run([sys.executable, "-m", "pipeline.stages.download"], cwd=workspace.path, env=env,
                              capture_output=True).returncode == 0

        url_path = {i: urlsplit(u).path for i, u in zip(table["ImageID"], table["OriginalURL"])}
        second = requested_paths(m)
        assert set(second.values()) == {1}, "an image was requested twice in the re-run"
        assert set(second) == {url_path[i] for i in url_path if i not in recorded}
        assert len(first_run) + len(m.requests) < len(table) + 4 + 4  # at most the in-flight ones twice

    manifest = read_parquet(IMAGES / "manifest.parquet")
    assert manifest["ImageID"].is_unique and set(manifest["ImageID"]) == set(table["ImageID"])
    assert (manifest["status"] == "ok").all()
    assert not [p for p in workspace.path.rglob("*") if p.name.endswith(".tmp")]
    assert sorted(p.name for p in IMAGES.glob("*.jpg")) == sorted(manifest["path"])
    assert not list((IMAGES / "batches").glob("*.jsonl"))
    for rec in manifest.itertuples():
        assert hashlib.md5((IMAGES / rec.path).read_bytes()).hexdigest() == rec.md5


# ---------------------------------------------------------------------------------------------------------
# The pieces, without a server


def test_verify_judges_bodies():
    jpeg = b"\xff\xd8\xff\xe0" + b"\0" * 100
    md5 = base64.b64encode(hashlib.md5(jpeg).digest()).decode()
    assert verify(jpeg, "http://h/x_o.jpg", md5, len(jpeg)).status == "ok"
    assert verify(jpeg, "http://h/x_o.jpg", md5, len(jpeg) + 1).status == "changed"
    assert verify(jpeg, "http://h/x_o.jpg", None, np.int64(len(jpeg) - 1)).status == "changed"  # from Parquet
    assert verify(jpeg + b"!", "http://h/x_o.jpg", md5, None).status == "changed"
    assert verify(jpeg, "http://h/x_o.jpg", None, float("nan")).status == "ok"  # CVDF: nothing to compare
    assert verify(jpeg, "https://s.yimg.com/pw/images/en-us/photo_unavailable.png").status == "placeholder"
    assert verify(b"<html>gone</html>", "http://h/x_o.jpg").status == "not_image"
    assert verify(b"<html>", "http://h/x.jpg").keep is False


def test_known_placeholder_hash_is_a_placeholder_wherever_it_came_from(monkeypatch):
    body = b"\x89PNG\r\n\x1a\n" + b"unavailable"
    monkeypatch.setattr("pipeline.stages.download.verify.PLACEHOLDER_MD5S", PLACEHOLDER_MD5S | {hashlib.md5(body).hexdigest()})
    verdict = verify(body, "http://h/x_o.jpg", None, None)
    assert (verdict.status, verdict.ext, verdict.keep) == ("placeholder", "png", True)
    assert "880a7a58e05d3e83797f27573bb6d35c" in PLACEHOLDER_MD5S  # the real Flickr placeholder


def test_extensions_come_from_magic_bytes():
    assert sniff_extension(b"\xff\xd8\xff\xdb....") == "jpg"
    assert sniff_extension(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_extension(b"GIF89a....") == "gif"
    assert sniff_extension(b"RIFF\x10\0\0\0WEBPVP8 ") == "webp"
    assert sniff_extension(b"<!DOCTYPE html>") is None


def test_open_images_md5_is_base64_of_the_digest():
    # a real row: tests/fixtures/openimages-samples/train-images-boxable-with-rotation.sample.csv
    row = pd.read_csv(REPO / "tests/fixtures/openimages-samples/train-images-boxable-with-rotation.sample.csv").iloc[0]
    hex_md5 = md5_hex_from_base64(row["OriginalMD5"])
    assert len(hex_md5) == 32 and base64.b64encode(bytes.fromhex(hex_md5)).decode() == row["OriginalMD5"]
    assert md5_hex_from_base64("not base64!") is None and md5_hex_from_base64(float("nan")) is None


def test_a_journal_line_cut_by_a_kill_is_skipped_and_the_next_starts_clean(tmp_path):
    from pipeline.stages.download.writer import Journal, read_journal
    path = tmp_path / "part-00000.jsonl"
    path.write_bytes(b'{"ImageID":"a"}\n{"ImageID":"b","sta')
    with Journal(path) as log:
        log.append({"ImageID": "c"})
    assert [r["ImageID"] for r in read_journal(path)] == ["a", "c"]


def test_photos_no_longer_selected_are_set_aside_and_taken_back_without_a_request(clean_mirror, workspace):
    """After narrowing the selection data/images holds exactly what its manifest lists; widening it again
    costs no request for the photos set aside."""
    everything = write_selection(clean_mirror)
    workspace.write_params({**clean_mirror.params_overrides(), **fast()})
    assert run_download() == 0
    selected = read_parquet("data/selected.parquet")
    keep = sorted(selected["ImageID"].unique())[: len(everything) // 2]
    write_parquet(selected[selected["ImageID"].isin(keep)], "data/selected.parquet")
    clean_mirror.clear_requests()
    assert run_download() == 0
    manifest = read_parquet(IMAGES / "manifest.parquet")
    on_disk = sorted(p.name for p in IMAGES.iterdir() if p.is_file() and p.name != "manifest.parquet")
    assert sorted(manifest["ImageID"]) == keep and on_disk == sorted(p for p in manifest["path"] if p)
    aside = Path("data/images-unlisted")
    assert len(list(aside.glob("*.jpg"))) + len(list(aside.glob("*.png"))) == len(everything) - len(keep)
    assert not requested_paths(clean_mirror)  # narrowing asked nothing of the server
    write_parquet(selected, "data/selected.parquet")
    assert run_download() == 0
    assert not requested_paths(clean_mirror)  # nor did widening: the set-aside photos came back
    manifest = read_parquet(IMAGES / "manifest.parquet")
    assert len(manifest) == len(everything) and (manifest["status"] == "ok").all()
    assert all((IMAGES / p).is_file() for p in manifest["path"])
