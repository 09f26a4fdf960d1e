"""Push packages to a real S3 server (moto_server on 127.0.0.1) and pull them back with ``pipeline.pull``:
byte-for-byte copies of the dataset and of its model, versions, a push cut off half way, a file large enough
to go up in parts, processes publishing to one bucket at once (and the lock between them), and one-line
errors without secrets (a bad bucket, hash or endpoint; a missing AWS profile; a dead proxy)."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from package_inputs import (
    crops,
    expected_model_sources,
    expected_pulled,
    one_line_error,
    run,
    write_inputs,
    write_shards_of_splits,
)
from publishers import publish_at_once
from s3server import ACCESS_KEY, SECRET_KEY, CutProxy, S3Server, aws_env, free_port

NAME = "tests/s3-ds"
HASH_LINE = re.compile(r"^([0-9a-f]{64})  (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC  (latest |       )(.*)$")


def versions(result) -> list[tuple[str, bool, str]]:
    """(hash, latest, message) per line of ``pull --list``."""
    assert result.returncode == 0, result.stderr[-3000:]
    found = []
    for line in result.stdout.splitlines():
        match = HASH_LINE.match(line)
        assert match, line
        found.append((match[1], match[3] == "latest ", match[4]))
    return found


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def push(ws: Path, env: dict[str, str]) -> str:
    return push_both(ws, env)["top_hash"]


def push_both(ws: Path, env: dict[str, str]) -> dict:
    """data/package.json after a push: the dataset's name and top hash, and ``model``'s."""
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((ws / "data/package.json").read_text())


def set_params(ws: Path, **sections: dict) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params.update(sections)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def pushed(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Version 1, then version 2 (a params change; a model with new metrics bytes) of NAME and NAME-model in
    a fresh bucket.

    The workspace is left with version 2's inputs; version 1's model files are kept in ``v1`` for comparison.
    """
    root = tmp_path_factory.mktemp("pull")
    ws, env = root / "ws", aws_env(s3_server.endpoint, root / "home")
    ws.mkdir()
    registry = s3_server.create_bucket("datasets")
    write_inputs(ws, {"name": NAME, "registry": registry, "message": "first cut"}, eval_top1=0.75, model=True)
    first = push_both(ws, env)
    v1 = {key: path.read_bytes() for key, path in expected_model_sources(ws).items()}
    write_inputs(ws, {"name": NAME, "registry": registry, "message": "seed 7"}, eval_top1=0.9, model=True)
    set_params(ws, split={"seed": 7})
    second = push_both(ws, env)
    return {"ws": ws, "env": env, "root": root, "registry": registry, "v1": v1,
            "hashes": (first["top_hash"], second["top_hash"]),
            "models": (first["model"]["top_hash"], second["model"]["top_hash"])}


def test_pull_by_hash_gives_every_file_byte_for_byte(pushed: dict) -> None:
    ws, env, (_, second) = pushed["ws"], pushed["env"], pushed["hashes"]
    dest = pushed["root"] / "pulled-v2"
    result = run(ws, env, "pipeline.pull", NAME, "--registry", pushed["registry"], "--hash", second, "--dest", str(dest))
    assert result.returncode == 0, result.stderr[-3000:]
    assert second in result.stdout

    # The shards unpacked into the split stage's class folders, byte for byte, and not kept.
    pulled = files_under(dest)
    sources = expected_pulled(ws)
    assert set(pulled) == set(sources) | {"README.md", "ATTRIBUTION.csv"}
    for key, path in sources.items():
        assert pulled[key] == path.read_bytes(), key
    assert f"unpacked {len(crops())} images from 3 shards" in result.stdout
    assert f"python -m pipeline.pull {NAME} --registry REGISTRY" in pulled["README.md"].decode()
    rows = list(csv.DictReader(pulled["ATTRIBUTION.csv"].decode().splitlines()))
    assert len(rows) == len({crop["photo"] for crop in crops()})
    # Ready for training: one class folder per label under each split.
    assert sorted(p.name for p in (dest / "splits/train").iterdir()) == ["Hamburger", "Submarine_sandwich"]


def test_versions_are_listed_and_the_old_one_keeps_its_bytes(pushed: dict) -> None:
    ws, env, (first, second) = pushed["ws"], pushed["env"], pushed["hashes"]
    assert first != second
    listed = versions(run(ws, env, "pipeline.pull", NAME, "--registry", pushed["registry"], "--list"))
    assert listed == [(second, True, "seed 7"), (first, False, "first cut")]

    # Model version 2 rewrote metrics/eval.json and model.pt under the same logical keys: version 1 must
    # still have its own, and name the dataset version it was trained on.
    model_v1, model_v2 = pushed["models"]
    assert model_v1 != model_v2
    dest = pushed["root"] / "pulled-model-v1"
    result = run(ws, env, "pipeline.pull", NAME + "-model", "--registry", pushed["registry"], "--hash", model_v1[:8],
                 "--dest", str(dest))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "load it: " in result.stdout
    pulled = files_under(dest)
    assert set(pulled) == set(pushed["v1"]) | {"README.md"}
    for key, content in pushed["v1"].items():
        assert pulled[key] == content, key
    assert json.loads(pulled["metrics/eval.json"])["top1"] == 0.75
    assert f"`{NAME}` at top hash `{first}`" in pulled["README.md"].decode()


def test_pushing_the_same_inputs_again_adds_no_version(pushed: dict) -> None:
    ws, env, (first, second) = pushed["ws"], pushed["env"], pushed["hashes"]
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("unchanged: already the latest version, no version added") == 2
    assert json.loads((ws / "data/package.json").read_text())["top_hash"] == second
    listed = versions(run(ws, env, "pipeline.pull", NAME, "--registry", pushed["registry"], "--list"))
    assert [h for h, _, _ in listed] == [second, first]


@pytest.mark.parametrize("args, code, says", [
    (["no-slash", "--list"], 2, "owner/dataset"),
    (["tests/unknown", "--list"], 2, "no package tests/unknown"),
    ([NAME, "--hash", "xyz!", "--dest", "d"], 2, "hex"),
    ([NAME, "--hash", "0123456789ab", "--dest", "d"], 2, "no version 0123456789ab"),
    ([NAME, "--hash", "0" * 64, "--dest", "d"], 2, "no version"),
    ([NAME, "--registry", "s3://no-such-bucket", "--list"], 2, "does not exist"),
    ([NAME, "--registry", "s3://datasets/a/path", "--list"], 2, "s3://bucket"),
])
def test_bad_name_hash_or_bucket_is_one_line_error(pushed: dict, args: list[str], code: int, says: str) -> None:
    if "--registry" not in args:
        args = [*args, "--registry", pushed["registry"]]
    result = run(pushed["root"], pushed["env"], "pipeline.pull", *args)
    assert result.returncode == code
    assert says in one_line_error(result)
    assert not (pushed["root"] / "d").exists()


def test_unreachable_endpoint_is_one_line_error(pushed: dict) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**pushed["env"], "AWS_ENDPOINT_URL_S3": dead, "AWS_MAX_ATTEMPTS": "2"}
    result = run(pushed["root"], env, "pipeline.pull", NAME, "--registry", pushed["registry"], "--list")
    assert result.returncode == 1
    assert dead in one_line_error(result)


@pytest.mark.parametrize("setting, code, says", [
    ({"AWS_PROFILE": "no-such-profile"}, 2, "AWS profile not found ('no-such-profile')"),
    ({"AWS_ENDPOINT_URL_S3": "not-a-url"}, 2, "the S3 endpoint 'not-a-url' is not a URL"),
    ({"AWS_ENDPOINT_URL_S3": "http://user:pa55word@not a url"}, 2, "is not a URL"),
])
def test_bad_aws_settings_are_one_line_errors(pushed: dict, setting: dict, code: int, says: str) -> None:
    env = {**pushed["env"], **setting}
    result = run(pushed["root"], env, "pipeline.pull", NAME, "--registry", pushed["registry"], "--dest", "d")
    assert result.returncode == code
    error = one_line_error(result)
    assert says in error and "pa55word" not in result.stderr
    assert not (pushed["root"] / "d").exists()


@pytest.mark.parametrize("command", [["--list"], ["--dest", "d"]])
def test_no_credentials_and_a_dead_proxy_is_one_line_error(pushed: dict, command: list[str]) -> None:
    # No credentials, no endpoint of our own: boto3 would go to AWS, through a proxy that is not there.
    env = {k: v for k, v in pushed["env"].items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                                "AWS_ENDPOINT_URL_S3")}
    env.update(HTTPS_PROXY=f"http://127.0.0.1:{free_port()}", HTTP_PROXY=f"http://127.0.0.1:{free_port()}",
               NO_PROXY="", AWS_MAX_ATTEMPTS="1")
    result = run(pushed["root"], env, "pipeline.pull", NAME, "--registry", "s3://some-bucket", *command)
    assert result.returncode == 1
    assert "cannot reach S3" in one_line_error(result)
    assert not (pushed["root"] / "d").exists()


def test_wrong_credentials_are_refused_without_showing_them(pushed: dict, s3_server: S3Server) -> None:
    wrong_key, wrong_secret = "AKIAWRONGWRONGWRONG1", "wrong/Secret+Key0123456789abcdefghijklmn"
    env = {**pushed["env"], "AWS_ACCESS_KEY_ID": wrong_key, "AWS_SECRET_ACCESS_KEY": wrong_secret}
    s3_server.require_auth(True)
    try:
        pulled = run(pushed["root"], env, "pipeline.pull", NAME, "--registry", pushed["registry"], "--list")
        packaged = run(pushed["ws"], env, "pipeline.stages.package")
    finally:
        s3_server.require_auth(False)
    for result in (pulled, packaged):
        assert result.returncode == 2
        assert "credentials" in one_line_error(result)
        for secret in (wrong_key, wrong_secret, ACCESS_KEY, SECRET_KEY):
            assert secret not in result.stdout + result.stderr


def test_server_dying_mid_push_registers_nothing(pushed: dict, s3_server: S3Server) -> None:
    first, second = pushed["hashes"]
    ws, env = pushed["root"] / "ws-cut", pushed["env"]
    shutil.copytree(pushed["ws"], ws)
    # New content the bucket has not seen (a crop, so a shard), big enough that the cut comes while it is going up.
    next((ws / "data/splits/train/Hamburger").iterdir()).write_bytes(os.urandom(2_000_000))
    write_shards_of_splits(ws)
    proxy = CutProxy(s3_server.port, cut_after=500_000)
    try:
        result = run(ws, {**env, "AWS_ENDPOINT_URL_S3": proxy.endpoint, "AWS_MAX_ATTEMPTS": "2"}, "pipeline.stages.package")
    finally:
        proxy.close()
    assert proxy.sent >= 500_000 and result.returncode == 1, result.stderr[-3000:]
    assert "cannot reach S3" in one_line_error(result)
    assert json.loads((ws / "data/package.json").read_text())["top_hash"] == second  # as the last push left it

    # Inspected on the server itself (still up behind the proxy): the same two versions, latest unchanged,
    # and no manifest of a third one (beside those of the two model versions).
    listed = versions(run(ws, env, "pipeline.pull", NAME, "--registry", pushed["registry"], "--list"))
    assert [(h, latest) for h, latest, _ in listed] == [(second, True), (first, False)]
    manifests = s3_server.client().list_objects_v2(Bucket="datasets", Prefix=".quilt/packages/")["Contents"]
    assert sorted(obj["Key"].rsplit("/", 1)[1] for obj in manifests) == sorted([first, second, *pushed["models"]])


def test_a_file_of_9_mib_goes_up_in_parts_and_plain_quilt3_verifies_it(s3_server: S3Server, tmp_path: Path) -> None:
    ws, env = tmp_path / "ws", aws_env(s3_server.endpoint, tmp_path / "home")
    ws.mkdir()
    registry = s3_server.create_bucket("big-files")
    write_inputs(ws, {"name": "tests/big", "registry": registry}, model=True)
    model = ws / "models/model.pt"
    model.write_bytes(os.urandom(9 * 1024 * 1024))  # a model or a shard: over the 8 MiB multipart threshold
    info = push_both(ws, env)["model"]

    objects = s3_server.client().list_objects_v2(Bucket="big-files", Prefix="tests/big-model/objects/")["Contents"]
    stored = next(obj for obj in objects if obj["Size"] == model.stat().st_size)
    assert stored["ETag"].endswith('-2"')  # a multipart upload of two parts
    dest = tmp_path / "pulled"
    result = run(tmp_path, env, "pipeline.pull", info["name"], "--registry", registry, "--dest", str(dest))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (dest / "model.pt").read_bytes() == model.read_bytes()
    quilt3 = str(Path(sys.executable).with_name("quilt3"))
    verify = subprocess.run([quilt3, "verify", info["name"], "--registry", registry, "--top-hash", info["top_hash"],
                             "--dir", str(dest)], env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and "Verification succeeded" in verify.stdout, verify.stdout + verify.stderr


def test_processes_publishing_at_once_to_one_bucket_lose_no_version(s3_server: S3Server, tmp_path: Path) -> None:
    env, registry = aws_env(s3_server.endpoint, tmp_path / "home"), s3_server.create_bucket("shared")
    published = publish_at_once(registry, "tests/shared", env, tmp_path / "work", publishers=3, rounds=2)
    listed = versions(run(tmp_path, env, "pipeline.pull", "tests/shared", "--registry", registry, "--list"))
    assert sorted(h for h, _, _ in listed) == sorted(h for hashes in published for h in hashes)  # all 6
    assert {message for _, _, message in listed} == {f"p{i} round {r}" for i in range(3) for r in range(2)}
    latest = [h for h, is_latest, _ in listed if is_latest]
    assert len(latest) == 1 and latest[0] in [hashes[-1] for hashes in published]
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket="shared", Prefix=".pipeline/locks/")


LOCK = ".pipeline/locks/tests/locked.lock"


def lock_body(lease_seconds: int) -> bytes:
    return json.dumps({"host": "gone-host", "pid": 4242, "token": "x", "lease_seconds": lease_seconds}).encode()


def test_a_lock_left_by_a_killed_publish_is_taken_over(s3_server: S3Server, tmp_path: Path) -> None:
    env, registry = aws_env(s3_server.endpoint, tmp_path / "home"), s3_server.create_bucket("stale-lock")
    s3_server.client().put_object(Bucket="stale-lock", Key=LOCK, Body=lock_body(lease_seconds=0))  # ran out
    published = publish_at_once(registry, "tests/locked", env, tmp_path / "work", publishers=1, rounds=1)
    assert "took over the publish lock of tests/locked" in (tmp_path / "work/p0.out").read_text()
    listed = versions(run(tmp_path, env, "pipeline.pull", "tests/locked", "--registry", registry, "--list"))
    assert [h for h, _, _ in listed] == published[0]
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket="stale-lock", Prefix=".pipeline/locks/")


def test_a_publish_waits_while_another_holds_the_lock(s3_server: S3Server, tmp_path: Path) -> None:
    env, registry = aws_env(s3_server.endpoint, tmp_path / "home"), s3_server.create_bucket("held-lock")
    client = s3_server.client()
    client.put_object(Bucket="held-lock", Key=LOCK, Body=lock_body(lease_seconds=600))  # a live holder's
    ws = tmp_path / "ws"
    ws.mkdir()
    write_inputs(ws, {"name": "tests/locked", "registry": registry})
    log = (tmp_path / "package.log").open("w+")
    publishing = subprocess.Popen([sys.executable, "-m", "pipeline.stages.package"], cwd=ws, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(1200):  # 120 s at most
            if "waiting for another publish of tests/locked" in (tmp_path / "package.log").read_text():
                break
            assert publishing.poll() is None, (tmp_path / "package.log").read_text()
            time.sleep(0.1)
        else:
            raise AssertionError("the publish never said it waits for the lock")
        assert "(host gone-host, pid 4242)" in (tmp_path / "package.log").read_text()
        assert "Contents" not in client.list_objects_v2(Bucket="held-lock", Prefix=".quilt/named_packages/")
        client.delete_object(Bucket="held-lock", Key=LOCK)  # the holder finishes
        assert publishing.wait(timeout=120) == 0, (tmp_path / "package.log").read_text()
    finally:
        if publishing.poll() is None:
            publishing.kill()
            publishing.wait()
        log.close()
    listed = versions(run(tmp_path, env, "pipeline.pull", "tests/locked", "--registry", registry, "--list"))
    assert [h for h, _, _ in listed] == [json.loads((ws / "data/package.json").read_text())["top_hash"]]
