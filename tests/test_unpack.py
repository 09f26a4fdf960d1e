"""The shards of a dataset package back into class folders (``pipeline.core.learn.unpack``), in process: the
split stage's files byte for byte, and the refusals that need no registry (two samples naming one file, a
tar that is not the one the index lists, a split holding more than its count). The hostile tars that come
through a real registry and ``pipeline.pull``: test_registry.py."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from package_inputs import write_inputs

from pipeline.core.base.errors import UserError
from pipeline.core.learn.unpack import unpack_shards


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("unpack")
    write_inputs(ws, {"name": "tests/unpack", "registry": ""})
    return ws


def test_the_class_folders_come_back_byte_for_byte(workspace: Path, tmp_path: Path) -> None:
    done = unpack_shards(workspace / "data/shards", tmp_path / "splits")
    splits = {k: v for k, v in files_under(workspace / "data/splits").items() if k.count("/") == 2}
    assert files_under(tmp_path / "splits") == splits
    assert (done.images, done.shards) == (len(splits), 3)


def spoilt_copy(workspace: Path, tmp_path: Path, spoil) -> Path:
    """The shards with the train tar rewritten by ``spoil(members) -> members``, the index agreeing with it."""
    shards = tmp_path / "shards"
    shutil.copytree(workspace / "data/shards", shards)
    index = json.loads((shards / "index.json").read_text())
    entry = index["splits"]["train"]["shards"][0]
    with tarfile.open(shards / entry["name"]) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in spoil(members):
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (shards / entry["name"]).write_bytes(out.getvalue())
    entry.update(bytes=len(out.getvalue()), sha256=hashlib.sha256(out.getvalue()).hexdigest())
    (shards / "index.json").write_text(json.dumps(index))
    return shards


def test_two_samples_naming_one_file_are_refused(workspace: Path, tmp_path: Path) -> None:
    def twice(members):
        return members[:-3] + members[:3]  # the last sample (.cls, .jpg, .json) becomes a copy of the first
    shards = spoilt_copy(workspace, tmp_path, twice)
    with pytest.raises(UserError, match=r"train-000000.tar: 'train/.*\.jpg' is taken"):
        unpack_shards(shards, tmp_path / "out")


def test_a_tar_the_index_does_not_list_and_a_split_over_its_count_are_refused(workspace: Path,
                                                                            tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(workspace / "data/shards", shards)
    with (shards / "val-000000.tar").open("ab") as fh:
        fh.write(b"\0" * 512)  # the same samples, other bytes
    with pytest.raises(UserError, match="val-000000.tar: not the shard index.json lists"):
        unpack_shards(shards, tmp_path / "out")

    index = json.loads((workspace / "data/shards/index.json").read_text())
    index["splits"]["train"]["images"] -= 1
    (shards / "index.json").write_text(json.dumps(index))
    shutil.copy(workspace / "data/shards/val-000000.tar", shards / "val-000000.tar")
    with pytest.raises(UserError, match="more images than the index says its split holds"):
        unpack_shards(shards, tmp_path / "out2")
