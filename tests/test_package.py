"""``python -m pipeline.stages.package`` into the local registry: the dataset and model packages, their
contents, metadata, licences, attribution and README; names that follow the labels; the same top hash for
the same inputs, and no second version for the same content; one-line errors. (S3: test_pull.py; moving a
registry and pull's refusals: test_registry.py.)"""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pandas as pd
import pytest
import yaml
from package_inputs import (
    BY,
    BY_SA,
    LABELS,
    PER_SPLIT,
    crops,
    expected_model_sources,
    expected_sources,
    image_id,
    one_line_error,
    photo_credits,
    run,
    write_inputs,
)
from s3server import isolated_env

import pipeline
from pipeline.core.base.io import write_parquet
from pipeline.stages.package import dataset
from pipeline.stages.package.provenance import DATASET_STAGES, code_version

NAME = "tests/local-ds"
DERIVED = "openimages/hamburger-submarine-sandwich"  # LABELS, sorted, lower-cased
REGISTRY = "data/quilt-registry"


def counts() -> dict[str, dict[str, int]]:
    """The truth: crops per split and label, from the inputs' definition."""
    return {split: {label: sum(c["split"] == split and c["label"] == label for c in crops()) for label in LABELS}
            for split in PER_SPLIT}


def build(ws: Path, env: dict[str, str]) -> dict:
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((ws / "data/package.json").read_text())


def manifest(ws: Path, top_hash: str) -> list[dict]:
    """The version's quilt3 manifest (JSON lines: package metadata first, then one line per file)."""
    text = (ws / REGISTRY / ".quilt/packages" / top_hash).read_text()
    return [json.loads(line) for line in text.splitlines()]


def registered(ws: Path, name: str) -> list[str]:
    """The top hashes registered for ``name``, one per version (quilt3's timestamp pointers)."""
    folder = ws / REGISTRY / ".quilt/named_packages" / name
    return sorted(p.read_text() for p in folder.iterdir() if p.name != "latest") if folder.is_dir() else []


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return isolated_env(tmp_path / "home")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    write_inputs(workspace, {"name": NAME, "registry": ""}, model=True)
    return workspace


#: a source URL with a password and a token, as a user might type it: neither may be published
SECRET_SOURCE = {"base_url": "https://mirror-user:s3cr3t-pass@mirror.example/openimages?token=t0ken",
                 "cvdf_url": "https://cvdf-user:an0ther-pass@cvdf.example"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One build of both packages (source URLs with credentials), shared by the tests that only read it,
    and a pull of the dataset."""
    root = tmp_path_factory.mktemp("package")
    ws, env = root / "ws", isolated_env(root / "home")
    ws.mkdir()
    write_inputs(ws, {"name": NAME, "registry": ""}, model=True)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump({**params, "source": SECRET_SOURCE}))
    info = build(ws, env)
    pulled = root / "pulled"
    result = run(ws, env, "pipeline.pull", NAME, "--registry", REGISTRY, "--hash", info["top_hash"][:10],
                 "--dest", str(pulled))
    assert result.returncode == 0, result.stderr[-3000:]
    return {"ws": ws, "env": env, "info": info, "pulled": pulled}


def test_the_dataset_package_holds_every_file_and_its_provenance(built: dict) -> None:
    ws, info = built["ws"], built["info"]
    assert info["name"] == NAME and info["registry"] == REGISTRY and len(info["top_hash"]) == 64
    meta_line, *entries = manifest(ws, info["top_hash"])
    sources = expected_sources(ws)
    assert {entry["logical_key"] for entry in entries} == set(sources) | {"README.md", "ATTRIBUTION.csv"}

    # Every copied file is stored in the registry itself, byte for byte (not a pointer into data/), under its
    # content hash and its own extension (what quilt3's readers go by).
    registry = (ws / REGISTRY).resolve()
    for entry in entries:
        stored = Path(url2pathname(urlsplit(entry["physical_keys"][0]).path))
        assert stored.is_relative_to(registry / NAME / "objects"), stored
        assert stored.suffix == Path(entry["logical_key"]).suffix.lower()
        if entry["logical_key"] in sources:
            assert stored.read_bytes() == sources[entry["logical_key"]].read_bytes()

    meta = meta_line["user_meta"]
    assert meta_line["message"] == "openimages-pipeline dataset"
    assert meta["source"]["version"] == "v6"
    # what shaped it
    assert list(meta["params"]) == ["labels", "source", "select", "crop", "clean", "audit", "split", "shards"]
    assert meta["params"]["labels"] == list(LABELS)
    assert meta["dataset"]["counts"] == counts()
    assert meta["dataset"]["images"] == len(crops()) and meta["dataset"]["photos"] == len(crops()) - 1
    # The code as a version and a hash of its source: no git commit, nothing of the machine or the clock.
    assert meta["code"] == code_version(DATASET_STAGES)
    assert meta["code"]["version"] == pipeline.__version__ and re.fullmatch(r"[0-9a-f]{64}", meta["code"]["sha256"])
    assert "runtime" not in json.dumps(meta) and "git" not in meta["code"]


def test_the_model_package_names_the_dataset_it_was_trained_on(built: dict) -> None:
    ws, info = built["ws"], built["info"]
    model = info["model"]
    assert model["name"] == NAME + "-model"
    meta_line, *entries = manifest(ws, model["top_hash"])
    sources = expected_model_sources(ws)
    assert {entry["logical_key"] for entry in entries} == set(sources) | {"README.md"}
    for entry in entries:
        if entry["logical_key"] in sources:
            stored = Path(url2pathname(urlsplit(entry["physical_keys"][0]).path))
            assert stored.read_bytes() == sources[entry["logical_key"]].read_bytes()
    meta = meta_line["user_meta"]
    assert meta["dataset"] == {"name": NAME, "top_hash": info["top_hash"]}
    assert meta["metrics"]["top1"] == 0.75 and list(meta["params"]) == ["train", "evaluate"]
    readme = next(e for e in entries if e["logical_key"] == "README.md")
    text = Path(url2pathname(urlsplit(readme["physical_keys"][0]).path)).read_text()
    assert f"`{NAME}` at top hash `{info['top_hash']}`" in text and "| top1 | 0.75 |" in text


def test_same_inputs_same_top_hash_anywhere_and_no_second_version(ws: Path, env: dict[str, str],
                                                                  tmp_path: Path) -> None:
    first = build(ws, env)
    assert registered(ws, NAME) == [first["top_hash"]]

    # What a killed run leaves (pids of processes that are gone): the next run sweeps it, and only it.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    leftover = ws / f"data/.package.{pid}.package-staging"
    (leftover / "x").mkdir(parents=True)
    half_copied = ws / REGISTRY / NAME / "objects" / f".abc.json.{pid}.tmp"
    half_copied.write_text("{")
    live = ws / "data/.package.1.package-staging"  # pid 1 is alive: another run's, left alone
    live.mkdir()

    # Built again from the same inputs: nothing new is registered, and the stage says so.
    again = run(ws, env, "pipeline.stages.package")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"dataset {NAME}@{first['top_hash'][:12]}" in again.stdout
    assert again.stdout.count("unchanged: already the latest version, no version added") == 2  # dataset, model
    assert registered(ws, NAME) == [first["top_hash"]]
    assert registered(ws, NAME + "-model") == [first["model"]["top_hash"]]
    assert not leftover.exists() and not half_copied.exists() and live.exists()

    # The same inputs written again elsewhere (other paths, later mtimes): the same top hashes.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_inputs(elsewhere, {"name": NAME, "registry": ""}, model=True)
    assert build(elsewhere, env) == first

    # A new model (other metrics) is a new model version; the dataset stays as it was.
    write_inputs(ws, {"name": NAME, "registry": ""}, eval_top1=0.9, model=True)
    retrained = build(ws, env)
    assert retrained["top_hash"] == first["top_hash"] and retrained["model"]["top_hash"] != first["model"]["top_hash"]
    assert registered(ws, NAME) == [first["top_hash"]]


def add_download_weather(ws: Path, attempts: int, last_error: tuple[str, int]) -> None:
    """Give ``ws``'s manifests what a run records about how its downloads went: attempts per photo, and a photo
    whose download gave up on ``last_error`` (reason, HTTP status), repeated by the clean manifest."""
    images = pd.read_parquet(ws / "data/images/manifest.parquet")
    failed = image_id(99)
    reason, status = last_error
    gave_up = {"ImageID": failed, "Subset": "train", "status": "failed", "path": "", "reason": reason,
               "http_status": status, "final_url": "u", "attempts": attempts}
    images = pd.concat([images.assign(reason="", http_status=200, final_url="u", attempts=attempts),
                        pd.DataFrame([gave_up])])
    write_parquet(images, ws / "data/images/manifest.parquet")
    cleaned = pd.read_parquet(ws / "data/clean/manifest.parquet").assign(download_status="ok", reason="", detail="")
    gone = {"ImageID": failed, "BoxIndex": 0, "Label": LABELS[0], "keep": False, "reject_reason": "not_downloaded",
            "crop_path": "", "download_status": "failed", "reason": f"failed: {reason}", "detail": f"failed: {reason}"}
    write_parquet(pd.concat([cleaned, pd.DataFrame([gone])]), ws / "data/clean/manifest.parquet")


def test_how_the_downloads_went_is_not_part_of_the_dataset(tmp_path: Path, env: dict[str, str]) -> None:
    built_here = []
    for name, attempts, last_error in [("calm", 1, ("HTTP 500 (gave up after 6 attempts)", 500)),
                                       ("stormy", 3, ("no answer for 30 s (runtime.read_timeout)", 0))]:
        ws = tmp_path / name
        ws.mkdir()
        write_inputs(ws, {"name": NAME, "registry": ""})
        add_download_weather(ws, attempts, last_error)
        built_here.append((ws, build(ws, env)["top_hash"]))
    (calm, first), (_, second) = built_here
    assert first == second
    stored = {e["logical_key"]: Path(url2pathname(urlsplit(e["physical_keys"][0]).path))
              for e in manifest(calm, first)[1:]}
    images = pd.read_parquet(stored["manifests/images.parquet"])
    assert "attempts" not in images.columns and len(images) == len(crops())  # every photo, and the failed one
    assert images.loc[images["status"] == "failed", ["reason", "http_status", "final_url"]].values.tolist() == [
        [dataset.FAILED_REASON, 0, ""]]
    cleaned = pd.read_parquet(stored["manifests/clean.parquet"])
    assert (cleaned.loc[cleaned["download_status"] == "failed", "detail"] == f"failed: {dataset.FAILED_REASON}").all()


def test_names_follow_the_labels_and_a_name_keeps_its_labels(tmp_path: Path, env: dict[str, str]) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    write_inputs(ws, {"name": "", "registry": ""}, model=True)
    first = build(ws, env)
    assert (first["name"], first["model"]["name"]) == (DERIVED, DERIVED + "-model")

    # Other labels, no package.name: another name, and the first one's latest is untouched.
    write_inputs(ws, {"name": "", "registry": ""}, model=True, labels=("Pizza", "Hot dog"))
    other = build(ws, env)
    assert other["name"] == "openimages/hot-dog-pizza"
    assert registered(ws, DERIVED) == [first["top_hash"]]

    # Other labels under the first name, given by hand: refused, in one line naming both label sets.
    write_inputs(ws, {"name": DERIVED, "registry": ""}, model=True, labels=("Pizza", "Hot dog"))
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 2
    error = one_line_error(result)
    assert DERIVED in error and "[Hamburger, Submarine sandwich]" in error and "[Hot dog, Pizza]" in error
    assert "package.allow_other_labels" in error
    assert registered(ws, DERIVED) == [first["top_hash"]]
    assert registered(ws, DERIVED + "-model") == [first["model"]["top_hash"]]
    assert json.loads((ws / "data/package.json").read_text()) == other  # as the last good run left it
    latest = ws / REGISTRY / ".quilt/named_packages" / DERIVED / "latest"
    assert latest.read_text() == first["top_hash"]

    # Said explicitly: published, and it is now that name's latest.
    write_inputs(ws, {"name": DERIVED, "registry": "", "allow_other_labels": True}, model=True,
                 labels=("Pizza", "Hot dog"))
    forced = build(ws, env)
    assert forced["name"] == DERIVED and latest.read_text() == forced["top_hash"] != first["top_hash"]


def test_a_derived_name_never_takes_a_models_name() -> None:
    from pipeline.core.base.package_names import check_dataset_name
    from pipeline.stages.package.naming import dataset_name

    assert dataset_name(["Fashion model"]) == "openimages/fashion-model_dataset"  # not the model of fashion
    assert dataset_name(["Model"]) == "openimages/model"  # its model is openimages/model-model
    long = dataset_name([f"Model {i}" for i in range(12)] + ["Z model"])
    assert len(long.split("/")[1]) <= 58 and not long.endswith("-model")
    for name in ("openimages/fashion-model_dataset", "openimages/model", long):
        assert check_dataset_name(name) == name


#: the metadata of a latest version a dataset must not be published onto
NOT_A_DATASET = {
    "a model": ({"kind": "model", "model": {"arch": "resnet18"}}, "its latest version is a model package"),
    "a model from before kinds were recorded": ({"model": {"arch": "resnet18"}, "dataset": {"name": "x/y"}},
                                                "its latest version is a model package"),
    "someone else's package": ({"note": "made by hand"}, "a package openimages-pipeline did not make"),
}


@pytest.mark.parametrize("latest", NOT_A_DATASET)
def test_a_dataset_is_never_published_onto_another_kind(ws: Path, env: dict[str, str], latest: str) -> None:
    from pipeline.core.publish.registry import Registry, publish

    meta, says = NOT_A_DATASET[latest]
    registry = Registry.parse(str(ws / REGISTRY))
    (ws / "other.txt").write_text("not a dataset")
    there = publish(registry, NAME, {"other.txt": ws / "other.txt"}, meta, "there first").top_hash
    write_inputs(ws, {"name": NAME, "registry": ""})
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 2
    error = one_line_error(result)
    assert NAME in error and says in error
    assert registered(ws, NAME) == [there] and not (ws / "data/package.json").exists()


def test_a_model_is_never_published_onto_a_dataset(ws: Path, env: dict[str, str]) -> None:
    from pipeline.core.publish.registry import Registry, publish

    # A dataset that an older version of the pipeline let be called tests/local-ds-model.
    registry = Registry.parse(str(ws / REGISTRY))
    (ws / "other.txt").write_text("a dataset")
    meta = {"dataset": {"labels": ["Cat"], "counts": {}}}
    there = publish(registry, NAME + "-model", {"other.txt": ws / "other.txt"}, meta, "there first").top_hash
    result = run(ws, env, "pipeline.stages.package")  # NAME, with a model
    assert result.returncode == 2
    error = one_line_error(result)
    assert f"{NAME}-model: its latest version is a dataset package" in error
    assert registered(ws, NAME + "-model") == [there]
    assert len(registered(ws, NAME)) == 1  # the dataset itself was published


def test_licences_with_counts_attribution_and_readme(built: dict) -> None:
    ws, info, out = built["ws"], built["info"], built["pulled"]
    photos = sorted({crop["photo"] for crop in crops()}, key=image_id)
    share_alike = sum(photo_credits(p)["License"] == BY_SA for p in photos)
    assert 0 < share_alike < len(photos)
    licences = manifest(ws, info["top_hash"])[0]["user_meta"]["license"]["images"]
    assert [(lic["name"], lic["url"], lic["photos"]) for lic in licences] == [
        ("CC BY 2.0", BY, len(photos) - share_alike), ("CC BY-SA 2.0", BY_SA, share_alike)]
    assert all("attribution" in lic["requires"][0] for lic in licences)
    assert any("share-alike" in duty for duty in licences[1]["requires"])
    assert not any("share-alike" in duty for duty in licences[0]["requires"])

    with open(out / "ATTRIBUTION.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["ImageID"] for row in rows] == [image_id(p) for p in photos]  # one row per photo, sorted
    for row, photo in zip(rows, photos):
        credits = photo_credits(photo)
        for column in ("AuthorProfileURL", "OriginalLandingURL", "License", "Title"):
            assert row[column] == credits[column]
        # A leading '=' would run as a formula in a spreadsheet: it is escaped, the rest kept.
        assert row["Author"] == ("'" + credits["Author"] if credits["Author"].startswith("=") else credits["Author"])

    readme = (out / "README.md").read_text()
    assert "Open Images v6" in readme
    assert f"| CC BY 2.0 | {len(photos) - share_alike} | attribution" in readme
    assert f"| CC BY-SA 2.0 | {share_alike} | attribution" in readme and "share-alike: adaptations" in readme
    for label in LABELS:
        per_split = [counts()[split][label] for split in PER_SPLIT]
        assert f"| {label} | {' | '.join(map(str, per_split))} | {sum(per_split)} |" in readme
    assert f"python -m pipeline.pull {NAME} --registry REGISTRY" in readme and f"quilt3 install {NAME}" in readme
    assert f"`{NAME}-model`" in readme


def test_a_password_in_the_source_url_is_never_published(built: dict) -> None:
    ws, info = built["ws"], built["info"]
    published = "".join(p.read_text(errors="replace") for p in (ws / REGISTRY).rglob("*") if p.is_file())
    published += "".join(p.read_text(errors="replace") for p in built["pulled"].rglob("*") if p.is_file())
    for secret in ("s3cr3t-pass", "an0ther-pass", "t0ken", "mirror-user", "cvdf-user"):
        assert secret not in published
    source = manifest(ws, info["top_hash"])[0]["user_meta"]["params"]["source"]
    assert source["base_url"] == "https://***@mirror.example/openimages?token=***"
    assert source["cvdf_url"] == "https://***@cvdf.example"


def test_quilt3s_own_readers_read_every_entry(built: dict) -> None:
    ws, env, info = built["ws"], built["env"], built["info"]
    registry = (ws / REGISTRY).resolve().as_uri()
    script = f"""
import json, sys, quilt3, pandas as pd
for name, top_hash in {[(info["name"], info["top_hash"]), (info["model"]["name"], info["model"]["top_hash"])]!r}:
    pkg = quilt3.Package.browse(name, registry={registry!r}, top_hash=top_hash)
    for key, entry in pkg.walk():
        if key.endswith((".parquet", ".json", ".csv")):
            value, again = pkg[key](), entry.deserialize()
            kind = "frame" if isinstance(value, pd.DataFrame) else type(value).__name__
            shape = list(value.shape) if kind == "frame" else sorted(value)
            print(json.dumps([name, key, kind, shape, kind != "frame" and value == again]))
"""
    read = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr[-3000:]
    seen = {(name, key): (kind, shape, same) for name, key, kind, shape, same in map(json.loads, read.stdout.splitlines())}
    sources = {**{(NAME, k): p for k, p in expected_sources(ws).items()},
               **{(NAME + "-model", k): p for k, p in expected_model_sources(ws).items()}}
    wanted = {nk for nk in sources if nk[1].endswith((".parquet", ".json", ".csv"))} | {(NAME, "ATTRIBUTION.csv")}
    assert set(seen) == wanted
    for (name, key), (kind, shape, same) in seen.items():
        if key.endswith(".parquet"):
            assert kind == "frame" and shape == list(pd.read_parquet(sources[name, key]).shape), key
        elif key.endswith(".csv"):
            assert kind == "frame", key
        else:
            assert kind == "dict" and same and shape == sorted(json.loads(sources[name, key].read_text())), key

    # quilt3's own install, and its check of the installed folder against the package: the shards as published
    quilt3_cli, installed = str(Path(sys.executable).with_name("quilt3")), ws.parent / "quilt3-installed"
    done = subprocess.run([quilt3_cli, "install", NAME, "--registry", registry, "--top-hash", info["top_hash"],
                           "--dest", str(installed)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for key, source in expected_sources(ws).items():
        assert (installed / key).read_bytes() == source.read_bytes(), key
    verify = subprocess.run([quilt3_cli, "verify", "--registry", registry, "--top-hash", info["top_hash"],
                             "--dir", str(installed), NAME], env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and "Verification succeeded" in verify.stdout, verify.stdout + verify.stderr


def test_the_crops_travel_as_shards_and_the_entries_do_not_grow_with_them(tmp_path: Path,
                                                                          env: dict[str, str]) -> None:
    """No entry per crop: four times the crops, the same entries (a shard per split at these sizes)."""
    keys = {}
    for scale in (1, 4):
        ws = tmp_path / f"ws{scale}"
        ws.mkdir()
        write_inputs(ws, {"name": NAME, "registry": ""}, scale=scale)
        info = build(ws, env)
        keys[scale] = sorted(entry["logical_key"] for entry in manifest(ws, info["top_hash"])[1:])
        meta = manifest(ws, info["top_hash"])[0]["user_meta"]
        assert meta["dataset"]["images"] == len(crops(scale))
    assert keys[1] == keys[4]
    assert [k for k in keys[4] if k.startswith("splits/")] == ["splits/labels.json", "splits/splits.parquet"]
    assert [k for k in keys[4] if k.startswith("shards/")] == [
        "shards/index.json", "shards/test-000000.tar", "shards/train-000000.tar", "shards/val-000000.tar"]


def test_missing_or_stale_shards_are_one_line_naming_the_shards_stage(ws: Path, env: dict[str, str]) -> None:
    shutil.rmtree(ws / "data/shards")
    missing = run(ws, env, "pipeline.stages.package")
    assert missing.returncode == 2
    assert "python -m pipeline.stages.shards" in one_line_error(missing)

    # A crop re-cut after the shards were written: the shards no longer hold the splits.
    write_inputs(ws, {"name": NAME, "registry": ""}, model=True)
    next((ws / "data/splits/val/Hamburger").iterdir()).write_bytes(b"\xff\xd8 other bytes")
    stale = run(ws, env, "pipeline.stages.package")
    assert stale.returncode == 2
    error = one_line_error(stale)
    assert "does not hold val" in error and "python -m pipeline.stages.shards" in error, error
    assert not (ws / REGISTRY).exists()


def test_missing_input_and_bad_registry_are_one_line_errors(ws: Path, env: dict[str, str]) -> None:
    (ws / "data/selected.parquet").unlink()
    error = one_line_error(run(ws, env, "pipeline.stages.package"))
    assert "data/selected.parquet" in error

    write_inputs(ws, {"name": NAME, "registry": "s3://bucket/some/path"})
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 2 and "s3://bucket" in one_line_error(result)

    write_inputs(ws, {"name": "no-owner", "registry": ""})
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 2 and "package.name" in one_line_error(result)

    write_inputs(ws, {"name": "tests/" + "x" * 60, "registry": ""})  # no room for "-model"
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 2 and "-model" in one_line_error(result)

    # a model left by a run with other labels must not be published as trained on this dataset
    write_inputs(ws, {"name": NAME, "registry": ""}, model=True)
    write_inputs(ws, {"name": "", "registry": ""}, labels=("Pizza", "Hot dog"))
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 2 and "model is from another run" in one_line_error(result)
    assert not (ws / "data/package.json").exists() and not (ws / REGISTRY).exists()


def test_inputs_that_do_not_match_are_refused(ws: Path, env: dict[str, str]) -> None:
    selected = pd.read_parquet(ws / "data/selected.parquet")
    write_parquet(selected[selected.ImageID != image_id(3)], ws / "data/selected.parquet")
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 2 and image_id(3) in one_line_error(result)

    write_parquet(selected.drop(columns=["Author"]), ws / "data/selected.parquet")
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 2 and "Author" in one_line_error(result)


def test_the_code_hash_follows_the_dataset_stages_only(tmp_path: Path) -> None:
    copy = tmp_path / "pipeline"
    shutil.copytree(Path(pipeline.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_version(DATASET_STAGES, copy)
    assert before == code_version(DATASET_STAGES)  # where the code lies does not matter
    (copy / "stages/train/loop.py").write_text("# the model's code, not the dataset's\n")
    assert code_version(DATASET_STAGES, copy) == before
    select = copy / "stages/select/stage.py"
    select.write_bytes(select.read_bytes().replace(b"\n", b"\r\n"))  # a Windows checkout
    assert code_version(DATASET_STAGES, copy) == before
    select.write_text(select.read_text() + "\n# an edit\n")
    assert code_version(DATASET_STAGES, copy)["sha256"] != before["sha256"]
