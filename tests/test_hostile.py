"""Hostile metadata servers and doctored files: one line and exit 2 for bad input, one line and exit 1 for a
failure, never a traceback, never a hang, nothing reported complete that is not, nothing lost.

Each test spoils one thing of an otherwise faithful Open Images (``hostile.py``) and runs the real stage.
"""
from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from download_inputs import write_selection
from hostile import HostileServer

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.io import read_parquet, write_parquet
from pipeline.core.net.sources import layout
from pipeline.mirror import Mirror
from pipeline.stages.crop.__main__ import main as crop_main
from pipeline.stages.download.__main__ import main as download_main
from pipeline.stages.metadata.__main__ import main as metadata_main
from pipeline.stages.select import stage as select

LAY = layout("v6")
#: patience for a hostile server measured in seconds, not minutes
QUICK = {"read_timeout": 1.0, "connect_timeout": 2.0, "retries": 1, "backoff": 0.01, "max_backoff": 1.0,
         "min_speed": 1000.0, "stall_window": 0.5, "metadata_deadline": 60.0}


def write_params(workspace, server: HostileServer, base_url: str | None = None, **sections: dict) -> None:
    workspace.write_params({"labels": ["Hamburger", "Sandwich"],
                            "source": {"version": "v6", "base_url": base_url or server.base_url},
                            "runtime": {**QUICK, **sections.pop("runtime", {})}, **sections})


def run(main, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = run_cli(main, [])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def raw(rel: str) -> Path:
    return paths.METADATA_RAW / rel


def nothing_kept(rel: str) -> bool:
    """No file, no half file, no sidecar of ``rel`` in the raw folder."""
    return not raw(rel).exists() and not raw(rel).with_name(raw(rel).name + ".part").exists()


def csv_with(server: HostileServer, rel: str, edit) -> None:
    frame = pd.read_csv(io.BytesIO(server.pristine[rel]), dtype=str, keep_default_na=False)
    server.serve(rel, edit(frame).to_csv(index=False).encode())


# --- item 6: malformed metadata ---------------------------------------------------------------------

def test_a_redirect_loop_is_one_line_and_exit_1(hostile, workspace, capsys) -> None:
    write_params(workspace, hostile)
    hostile.redirect_loop(LAY.classes)
    code, _, err = run(metadata_main, capsys)
    assert code == 1 and "redirects" in error_line(err)
    assert nothing_kept(LAY.classes)


def test_a_redirect_to_a_file_url_is_refused(hostile, workspace, capsys) -> None:
    write_params(workspace, hostile)
    hostile.redirect(LAY.hierarchy, "file:///etc/passwd")
    code, _, err = run(metadata_main, capsys)
    assert code == 1 and "not http(s)" in error_line(err)
    assert nothing_kept(LAY.hierarchy)


def test_text_that_is_not_utf8_is_read_with_replacement_characters(hostile, workspace, capsys) -> None:
    write_params(workspace, hostile)
    rel = LAY.images["train"]
    csv_with(hostile, rel, lambda f: f.assign(Title=["MARKER"] + list(f["Title"][1:])))
    hostile.serve(rel, hostile.files[rel].replace(b"MARKER", b"Caf\xe9 photo"))  # latin-1, not UTF-8
    code, out, _ = run(metadata_main, capsys)
    assert code == 0
    images = pq.read_table(paths.IMAGES_TABLE).to_pandas()
    assert len(images) == sum(pd.read_csv(io.BytesIO(hostile.pristine[r])).shape[0]
                              for r in LAY.images.values())
    assert (images["Title"] == "Caf\ufffd photo").sum() == 1  # the bad byte, visible, and the row kept


def test_a_cell_that_is_not_a_number_skips_only_its_row(hostile, workspace, capsys) -> None:
    write_params(workspace, hostile)
    rel = LAY.boxes["train"]
    csv_with(hostile, rel, lambda f: f.assign(XMin=["abc"] + list(f["XMin"][1:])))
    code, out, _ = run(metadata_main, capsys)
    assert code == 0 and "1 XMin is not a number" in out
    boxes = pd.concat(pq.read_table(p).to_pandas() for p in paths.BOXES_DIR.rglob("*.parquet"))
    served = sum(pd.read_csv(io.BytesIO(hostile.pristine[r])).shape[0] for r in LAY.boxes.values())
    assert len(boxes) == served - 1


@pytest.mark.parametrize("body, message", [
    (b"", "the class list is empty"),
    (b"/m/0cdn1\n/m/0l515\n", "no class in the class list"),              # one column
    (b"/m/0cdn1,Hamburger,extra\n/m/0l515,Sandwich,x\n", "no class in the class list"),  # three
])
def test_a_class_list_without_two_columns_is_one_line(hostile, workspace, capsys, body, message) -> None:
    write_params(workspace, hostile)
    hostile.serve(LAY.classes, body)
    code, _, err = run(metadata_main, capsys)
    assert code == 1 and message in error_line(err)
    assert not paths.CLASSES_TABLE.exists()


#: bodies that arrive whole (a length, every byte of it) and are not the file: an error page, noise
GARBAGE = random.Random(0).randbytes(200_000)
BOX_HEADER = (b"ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,"
              b"IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside\n")


@pytest.mark.parametrize("rel, body, message", [
    (LAY.images["train"], GARBAGE, "no column ImageID"),
    (LAY.boxes["train"], BOX_HEADER + GARBAGE, "not a CSV file this stage can read"),  # was a traceback
    (LAY.classes, GARBAGE[:5000], "not a class list"),  # was pyarrow's "Exception ignored" traceback, then the line
    (LAY.hierarchy, b"<html><body>Down for maintenance</body></html>", "not a readable JSON hierarchy"),
])
def test_a_garbage_file_that_arrived_whole_is_set_aside_and_fetched_again_once_fixed(hostile, workspace, capsys,
                                                                                      rel, body, message) -> None:
    write_params(workspace, hostile)
    hostile.serve(rel, body)
    code, _, err = run(metadata_main, capsys)
    line = error_line(err)
    assert code == 1 and f"error: {raw(rel)}: {message}" in line
    assert line.endswith(f"moved it to {paths.METADATA_REJECTED / rel} (look at it, then delete it): the next run "
                         "fetches it again")
    assert nothing_kept(rel) and (paths.METADATA_REJECTED / rel).read_bytes() == body
    hostile.reset()  # the server is fixed: the file is fetched again, not taken for complete
    code, out, _ = run(metadata_main, capsys)
    assert code == 0 and f"downloaded  {rel}" in out
    assert raw(rel).read_bytes() == hostile.pristine[rel]


def test_a_hierarchy_3000_levels_deep_is_refused_in_one_line(hostile, workspace, capsys) -> None:
    write_params(workspace, hostile)
    deep = '{"LabelName": "/m/0bl9f", "Subcategory": [' * 3000 + '{"LabelName": "/m/x"}' + "]}" * 3000
    hostile.serve(LAY.hierarchy, deep.encode())
    code, _, err = run(metadata_main, capsys)
    assert code == 1 and "nested too deeply" in error_line(err)
    assert not paths.HIERARCHY_JSON.exists()


def test_a_subcategory_that_is_not_a_list_is_ignored(hostile, workspace, capsys) -> None:
    write_params(workspace, hostile)
    tree = json.loads(hostile.pristine[LAY.hierarchy])
    tree["Subcategory"][0]["Subcategory"] = "not a list"
    tree["Subcategory"][1]["Part"] = 7
    hostile.serve(LAY.hierarchy, json.dumps(tree).encode())
    assert run(metadata_main, capsys)[0] == 0
    counts = select.select(["Hamburger", "Sandwich"], load_select())
    assert all(c.found for c in counts)


def load_select():
    from pipeline.core.base.params import load_params
    return load_params().select


@pytest.mark.parametrize("content", [b"", b"PAR1 this is not parquet"])
@pytest.mark.parametrize("module, target", [(download_main, paths.SELECTED), (crop_main, paths.IMAGES_MANIFEST)])
def test_an_empty_or_corrupt_parquet_between_stages_is_one_line_exit_2(workspace, capsys, content, module, target,
                                                                       clean_mirror) -> None:
    write_selection(clean_mirror)
    write_parquet(pd.DataFrame({"ImageID": [], "status": [], "path": []}), paths.IMAGES_MANIFEST)
    target.write_bytes(content)
    code, _, err = run(module, capsys)
    assert code == 2 and f"{target} is not a readable Parquet file" in error_line(err)


# --- items 4 and 7: transfers that never end -----------------------------------------------------------

def test_a_dripping_metadata_server_fails_in_one_line_and_keeps_nothing(hostile, workspace, capsys) -> None:
    write_params(workspace, hostile)
    hostile.drip(LAY.images["train"])
    code, _, err = run(metadata_main, capsys)
    assert code == 1 and "min_speed" in error_line(err)
    assert hostile.hits[LAY.images["train"]] == 2  # the first attempt and one retry, then it gave up
    assert not raw(LAY.images["train"]).exists()


def test_a_silent_metadata_server_fails_after_the_read_timeout(hostile, workspace, capsys) -> None:
    write_params(workspace, hostile)
    hostile.silent(LAY.hierarchy)
    code, _, err = run(metadata_main, capsys)
    assert code == 1 and "connection failed" in error_line(err) and "gave up after 2 attempts" in error_line(err)


def test_an_endless_body_is_cut_at_the_cap_never_kept_and_fetched_again_once_fixed(hostile, workspace,
                                                                                     capsys) -> None:
    write_params(workspace, hostile, metadata={"max_bytes": 2 << 20})
    rel = LAY.boxes["train"]
    hostile.endless(rel)
    code, _, err = run(metadata_main, capsys)
    assert code == 1 and "byte cap (metadata.max_bytes)" in error_line(err)
    assert nothing_kept(rel)
    hostile.reset()  # the server is fixed: the file is fetched, not taken for complete
    code, out, _ = run(metadata_main, capsys)
    assert code == 0 and f"downloaded  {rel}" in out
    assert raw(rel).read_bytes() == hostile.pristine[rel]


# --- items 2 and 12: what is printed -----------------------------------------------------------------

def test_the_banner_keeps_the_port_and_a_password_is_never_printed(hostile, workspace, capsys) -> None:
    with_password = hostile.base_url.replace("http://", "http://user:s3cret@")
    write_params(workspace, hostile, base_url=with_password)
    code, out, err = run(metadata_main, capsys)
    assert code == 0 and f"127.0.0.1:{hostile.port}/openimages" in out.splitlines()[0]
    del hostile.files[LAY.classes]  # now a 404, whose error line names the URL
    shutil.rmtree(paths.METADATA_RAW)
    code, out2, err2 = run(metadata_main, capsys)
    assert code == 1 and "***@" in error_line(err2)
    assert "s3cret" not in out + err + out2 + err2


def test_credentials_in_photo_urls_stay_out_of_the_manifest(clean_mirror: Mirror, workspace, capsys) -> None:
    images = write_selection(clean_mirror)
    selected = read_parquet(paths.SELECTED)
    selected["OriginalURL"] = selected["OriginalURL"].str.replace("http://", "http://me:pa55@", regex=False)
    write_parquet(selected, paths.SELECTED)
    workspace.write_params({**clean_mirror.params_overrides(), "download": {"rate": 0}})
    code, out, err = run(download_main, capsys)
    manifest = read_parquet(paths.IMAGES_MANIFEST)
    assert code == 0 and len(manifest) == len(images) and (manifest["status"] == "ok").all()
    assert not manifest.astype(str).apply(lambda c: c.str.contains("pa55")).any().any()
    assert manifest["url"].str.startswith("http://***@").all() and "pa55" not in out + err


# --- item 5: one bad row costs one row ----------------------------------------------------------------

def test_malformed_image_ids_are_skipped_with_a_count_and_the_chain_goes_on(hostile, workspace, capsys) -> None:
    write_params(workspace, hostile, download={"rate": 0}, crop={"min_side": 8})
    bad_ids = ["../../etc/x", "ABCDEF0123456789", "0123456789abcdef0"]
    boxes_rel, images_rel = LAY.boxes["train"], LAY.images["train"]

    def spoil(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame.loc[frame.index[:3], "ImageID"] = bad_ids
        return frame
    csv_with(hostile, boxes_rel, spoil)
    csv_with(hostile, images_rel, spoil)
    code, out, _ = run(metadata_main, capsys)
    assert code == 0 and "3 ImageID is not 16 hex digits" in out
    counts = select.select(["Hamburger", "Sandwich"], load_select())
    assert sum(c.selected for c in counts) > 0
    selected = read_parquet(paths.SELECTED)
    assert not selected["ImageID"].isin(bad_ids).any()
    assert run(download_main, capsys)[0] == 0
    code, out, err = run(crop_main, capsys)
    assert code == 0 and (read_parquet(paths.CROPS_MANIFEST)["status"] == "ok").any()
