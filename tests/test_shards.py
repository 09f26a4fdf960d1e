"""WebDataset shards of the splits: they round-trip to the same images and labels, are byte-identical on a
second run, feed training when the cache does not fit, and travel in the package."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
import yaml
from package_inputs import write_inputs
from trainkit import TINY_RUNTIME, TINY_TRAIN, make_splits, write_params

from pipeline.core.base.errors import UserError, run_cli
from pipeline.core.base.params import RuntimeParams, TrainParams
from pipeline.core.learn.data import decode
from pipeline.core.learn.folders import read_classes, read_split
from pipeline.core.learn.shards import ShardBatches, matching_shards, read_index
from pipeline.stages.package import dataset as package
from pipeline.stages.shards.__main__ import main as shards_main
from pipeline.stages.train import __main__ as train_main
from pipeline.stages.train.stage import train

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: see trainkit.single_thread

COUNTS = {"train": 12, "val": 5, "test": 4}  # per class: 24 / 10 / 8 images


def run_stage(workdir: Path, max_images: int) -> Path:
    (workdir / "params.yaml").write_text(yaml.safe_dump({"shards": {"max_images": max_images}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        assert run_cli(shards_main, []) == 0
    return workdir / "data/shards"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("sharded")
    make_splits(workdir / "data/splits", COUNTS)
    run_stage(workdir, max_images=5)
    return workdir


def test_shards_round_trip_to_the_same_images_and_labels(sharded: Path) -> None:
    splits_dir, folder = sharded / "data/splits", sharded / "data/shards"
    classes = read_classes(splits_dir)
    index = read_index(folder)
    assert index.dirnames == classes.dirnames and index.labels == ["Hamburger", "Submarine sandwich"]
    for name, per_class in COUNTS.items():
        split = read_split(splits_dir, name, classes)
        entry = index.splits[name]
        n = 2 * per_class
        assert entry.images == n and entry.files == [f"{name}-{i:06d}.tar" for i in range(-(-n // 5))]
        assert sorted(p.name for p in folder.glob(f"{name}-*.tar")) == entry.files
        urls = [str(folder / f) for f in entry.files]
        samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
        assert len(samples) == n
        for sample, path, target in zip(samples, split.paths, split.targets, strict=True):
            assert sample["__key__"] == f"{path.parent.name}/{path.stem}"
            assert sample["jpg"] == path.read_bytes()
            assert int(sample["cls"]) == target
            meta = json.loads(sample["json"])
            assert meta == {"dirname": path.parent.name, "label": classes.labels[target],
                            "path": path.relative_to(splits_dir).as_posix()}
        per_shard = [len(list(wds.WebDataset([u], shardshuffle=False, empty_check=False))) for u in urls]
        assert max(per_shard) <= 5 and sum(per_shard) == n  # shards.max_images


def test_same_splits_give_byte_identical_shards_in_another_folder(sharded: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_splits(again / "data/splits", COUNTS)  # the same pictures, new files (new mtimes, another path)
    second = run_stage(again, max_images=5)
    first = sharded / "data/shards"
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir()) and "index.json" in names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    run_stage(again, max_images=6)  # 24 train images: 4 shards of 6 instead of 5 shards of at most 5
    assert sorted(p.name for p in second.glob("train-*.tar")) == [f"train-{i:06d}.tar" for i in range(4)]


def test_shard_batches_cover_every_image_once_per_epoch(sharded: Path) -> None:
    splits_dir, folder = sharded / "data/splits", sharded / "data/shards"
    classes = read_classes(splits_dir)
    val = read_split(splits_dir, "val", classes)
    files = matching_shards(folder, val, splits_dir, classes)
    cpu = torch.device("cpu")
    expected = sorted((t, decode(p, 24).sum().item()) for p, t in zip(val.paths, val.targets))
    for workers in (0, 2):  # 2 workers share the 2 val shards; the main process cuts exact batches
        batches = ShardBatches(files, len(val), 24, 4, 2, shuffle=False, seed=0, workers=workers, device=cpu)
        got = list(batches)
        assert len(batches) == len(got) == 3 and [len(y) for _, y in got] == [4, 4, 2]
        assert sorted((t, x.sum().item()) for xs, ys in got for x, t in zip(xs, ys.tolist())) == expected
    train_split = read_split(splits_dir, "train", classes)
    train_files = matching_shards(folder, train_split, splits_dir, classes)
    shuffled = ShardBatches(train_files, len(train_split), 24, 5, 2, shuffle=True, seed=0, workers=0, device=cpu)
    epochs = [torch.cat([y for _, y in shuffled]) for _ in range(2)]
    assert len(shuffled) == 4 and all(len(e) == 20 for e in epochs)  # 24 images, batches of 5, ragged one dropped
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled every epoch


def test_training_streams_from_shards_when_the_cache_does_not_fit(sharded: Path, tmp_path: Path) -> None:
    p = TrainParams(**{**TINY_TRAIN, "epochs": 1, "freeze_epochs": 0, "batch_size": 8})
    no_cache = RuntimeParams(**{**TINY_RUNTIME, "cache_mb": 0})
    splits_dir, folder = sharded / "data/splits", sharded / "data/shards"
    result = train(p, no_cache, splits_dir, folder)
    assert result.metrics["data"] == "shards" and result.metrics["train_images"] == 24
    assert train(p, RuntimeParams(**TINY_RUNTIME), splits_dir, folder).metrics["data"] == "cached"
    # shards of other files (a crop replaced since) are not used: the folders are streamed instead
    copy = tmp_path / "splits"
    shutil.copytree(splits_dir, copy)
    victim = next((copy / "train/Hamburger").glob("*.jpg"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert matching_shards(folder, read_split(copy, "train", read_classes(copy)), copy, read_classes(copy)) is None
    assert train(p, no_cache, copy, folder).metrics["data"] == "streamed"


def test_a_damaged_shard_is_a_one_line_error(sharded: Path, tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    shutil.copytree(sharded / "data/shards", folder)
    bad = tmp_path / "bad.tar"
    with wds.TarWriter(str(bad), encoder=False) as sink:
        sink.write({"__key__": "Hamburger/x", "jpg": b"\xff\xd8 not a jpeg", "cls": b"7"})
    cpu = torch.device("cpu")
    for workers in (0, 1):  # raised in this process, or in a DataLoader worker and passed back
        with pytest.raises(UserError) as info:
            list(ShardBatches([bad], 1, 24, 4, 2, shuffle=False, seed=0, workers=workers, device=cpu))
        assert "\n" not in str(info.value) and "Hamburger/x: a sample needs one image and a class index below 2" in str(
            info.value)
    (folder / "index.json").write_text("{not json")
    with pytest.raises(UserError, match="not a shard index"):
        read_index(folder)


def test_the_package_carries_the_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_inputs(tmp_path, {"name": "test/shards", "registry": ""})
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    run_stage(tmp_path, max_images=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    files = package.input_files(package.read_shards())
    carried = {key: path for key, path in files.items() if key.startswith("shards/")}
    on_disk = sorted(p.name for p in (tmp_path / "data/shards").iterdir())
    assert sorted(carried) == [f"shards/{name}" for name in on_disk]
    assert "shards/index.json" in carried and "shards/train-000001.tar" in carried  # 6 train images, 4 a shard


def flip_label(shard: Path, key: str) -> None:
    """Change ``key``'s class index inside ``shard`` in place: same size, other label."""
    with tarfile.open(shard) as tar:
        member = tar.getmember(f"{key}.cls")
        offset, old = member.offset_data, tar.extractfile(member).read()
    assert old in (b"0", b"1")
    with shard.open("r+b") as fh:
        fh.seek(offset)
        fh.write(b"1" if old == b"0" else b"0")


def test_a_shard_changed_in_place_is_refused_until_the_shards_stage_runs_again(sharded: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "ws"
    shutil.copytree(sharded, workdir)
    folder = workdir / "data/shards"
    shard = folder / "train-000000.tar"
    size = shard.stat().st_size
    first = next(s for s in wds.WebDataset([str(shard)], shardshuffle=False, empty_check=False))
    flip_label(shard, first["__key__"])
    assert shard.stat().st_size == size  # the index's sizes and the splits' fingerprint still match
    p = TrainParams(**{**TINY_TRAIN, "epochs": 1, "freeze_epochs": 0, "batch_size": 8})
    no_cache = RuntimeParams(**{**TINY_RUNTIME, "cache_mb": 0})
    with pytest.raises(UserError) as info:
        train(p, no_cache, workdir / "data/splits", folder)
    assert str(info.value) == (f"{shard}: not the shard the shards stage wrote (its sha256 differs from "
                               f"{folder / 'index.json'}'s); "
                               "re-run the shards stage (python -m pipeline.stages.shards)")
    run_stage(workdir, max_images=5)  # the advice, followed
    assert train(p, no_cache, workdir / "data/splits", folder).metrics["data"] == "shards"


@pytest.mark.parametrize("first, second", [("a.b.jpg", "a_b.jpg"), ("zz.JPG", "zz.jpg"), ("x.jpg", "x.png")])
def test_files_whose_keys_collide_are_refused_naming_both(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          first: str, second: str) -> None:
    splits = make_splits(tmp_path / "data/splits", {"train": 2, "val": 1})
    photo = next((splits / "train/Hamburger").glob("*.jpg")).read_bytes()
    for name in (first, second):
        (splits / "train/Hamburger" / name).write_bytes(photo)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"shards": {"max_images": 100}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert run_cli(shards_main, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (f"data/splits/train/Hamburger/{first} and data/splits/train/Hamburger/{second} would both be the sample "
            f"'Hamburger/{Path(first).stem.replace('.', '_')}' in the shards") in err and "rename one of them" in err
    assert not (tmp_path / "data/shards").exists()


@pytest.mark.parametrize("doctor, message", [
    (lambda s: s.update(bytes=1e400), "bytes must be a whole number of at least 0, got inf"),  # 1e400 in the JSON
    (lambda s: s.update(bytes=-5), "bytes must be a whole number of at least 0, got -5"),
    (lambda s: s.update(bytes="123"), "bytes must be a whole number of at least 0, got '123'"),
    (lambda s: s.pop("sha256"), "KeyError: 'sha256'"),
    (lambda s: s.update(sha256="0" * 63), "sha256 must be 64 lower-case hex digits"),
    (lambda s: s.update(name="../x.tar"), "shard name '../x.tar' is not a plain .tar file name"),
])
def test_a_doctored_index_is_one_line(sharded: Path, tmp_path: Path, doctor, message: str) -> None:
    folder = tmp_path / "shards"
    shutil.copytree(sharded / "data/shards", folder)
    index = json.loads((folder / "index.json").read_text())
    doctor(index["splits"]["train"]["shards"][0])
    (folder / "index.json").write_text(json.dumps(index).replace("Infinity", "1e400"))
    with pytest.raises(UserError) as info:
        read_index(folder)
    assert "\n" not in str(info.value) and "not a shard index" in str(info.value) and message in str(info.value)


def test_a_file_name_that_is_not_utf8_is_one_line_for_shards_and_train(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    splits = make_splits(tmp_path / "data/splits", {"train": 2, "val": 1, "test": 1})
    params = yaml.safe_load(write_params(tmp_path, epochs=1, freeze_epochs=0).read_text())
    params["runtime"]["cache_mb"] = 0  # training streams from the shards, when they match the splits
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    bad = splits / "train/Hamburger" / os.fsdecode(b"caf\xe9.jpg")
    shown = "data/splits/train/Hamburger/caf\\udce9.jpg"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert run_cli(shards_main, []) == 0
        bad.write_bytes(next((splits / "train/Hamburger").glob("*.jpg")).read_bytes())
        for main in (shards_main, train_main.main):
            assert run_cli(main, []) == 2, main.__module__
            err = capsys.readouterr().err
            assert err == f"error: {shown}: the name is not UTF-8 text; rename it (the split stage names crops " \
                          "<ImageID>_<BoxIndex>.jpg in folders named after the labels)\n", err
    assert not (tmp_path / "models/model.pt").exists()


def test_the_shards_stage_starts_without_torch(tmp_path: Path) -> None:
    # it only copies files into tars: torch's import (over a second) would be all of a small run's start-up
    script = ("import sys\nfrom pipeline.stages.shards.__main__ import main\nfrom pipeline.stages.shards import stage\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'webdataset')))")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
