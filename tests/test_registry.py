"""A local registry that moves, is shared, or is damaged, and what ``pipeline.pull`` refuses: a registry folder
moved or copied elsewhere still installs (with ``pipeline.pull``; with plain quilt3 after ``--relink``), a
destination under a file, a link, or inside the registry is refused in one line with nothing written, a
killed pull's staging folder is swept by the next one; processes publishing to one registry at once lose
no version, two pulls into one folder at once leave it whole, and a damaged manifest is one line."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from package_inputs import expected_sources, one_line_error, run, write_inputs
from publishers import publish_at_once
from s3server import isolated_env

from pipeline.core.learn.unpack import MAX_IMAGE

NAME = "tests/moving-ds"
LIST_LINE = re.compile(r"([0-9a-f]{64})  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  (latest |       )(.*)")


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def quilt3_cli() -> str:
    return str(Path(sys.executable).with_name("quilt3"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A workspace whose local registry holds one version of NAME (and NAME-model)."""
    root = tmp_path_factory.mktemp("registry")
    ws, env = root / "ws", isolated_env(root / "home")
    ws.mkdir()
    write_inputs(ws, {"name": NAME, "registry": ""}, model=True)
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((ws / "data/package.json").read_text())
    return {"root": root, "ws": ws, "env": env, "info": info, "sources": expected_sources(ws)}


def test_a_moved_registry_still_installs_and_relinks_for_plain_quilt3(built: dict, tmp_path: Path) -> None:
    env, info = built["env"], built["info"]
    original = built["ws"] / "data/quilt-registry"
    moved = tmp_path / "elsewhere" / "registry"
    shutil.copytree(original, moved)
    before = tree(moved)
    away = original.with_name("gone")
    original.rename(away)  # the place the manifests point at is no more
    try:
        dest = tmp_path / "pulled"
        result = run(tmp_path, env, "pipeline.pull", NAME, "--registry", str(moved), "--dest", str(dest),
                     "--shards-only")  # the package as it is, to compare with plain quilt3's install below
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
        assert len(notes) == 1 and f"python -m pipeline.pull --registry {moved} --relink" in notes[0]
        assert info["top_hash"] in result.stdout
        pulled = tree(dest)
        for key, path in built["sources"].items():
            assert pulled[key] == path.read_bytes(), key
        assert tree(moved) == before  # a pull reads; it never writes into the registry

        # Plain quilt3 cannot (its manifests hold absolute paths) until --relink rewrites them once.
        plain = [quilt3_cli(), "install", NAME, "--registry", moved.as_uri(), "--top-hash", info["top_hash"]]
        failed = subprocess.run([*plain, "--dest", str(tmp_path / "plain-before")], env=env, capture_output=True,
                                text=True, timeout=120)
        assert failed.returncode != 0
        relinked = run(tmp_path, env, "pipeline.pull", "--registry", str(moved), "--relink")
        assert relinked.returncode == 0 and "relinked 2 manifest(s)" in relinked.stdout, relinked.stderr
        again = run(tmp_path, env, "pipeline.pull", "--registry", str(moved), "--relink")
        assert again.returncode == 0 and "nothing to do" in again.stdout
        installed = subprocess.run([*plain, "--dest", str(tmp_path / "plain")], env=env, capture_output=True,
                                   text=True, timeout=120)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert tree(tmp_path / "plain") == pulled
        listed = run(tmp_path, env, "pipeline.pull", NAME, "--registry", str(moved), "--list")
        assert listed.stdout.split()[0] == info["top_hash"]  # the same version, still the only one

        # Once relinked, a pull from there says nothing about moving.
        clean = run(tmp_path, env, "pipeline.pull", NAME + "-model", "--registry", str(moved), "--dest",
                    str(tmp_path / "model"))
        assert clean.returncode == 0 and "note:" not in clean.stderr, clean.stderr
        assert (tmp_path / "model/model.pt").read_bytes() == (built["ws"] / "models/model.pt").read_bytes()
    finally:
        away.rename(original)


@pytest.mark.parametrize("case", ["under a file", "link to an empty folder", "inside the registry", "not empty"])
def test_a_bad_destination_is_refused_with_nothing_written(built: dict, tmp_path: Path, case: str) -> None:
    registry = built["ws"] / "data/quilt-registry"
    before = tree(registry)
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full/keep.txt").write_text("mine")
    dest, says = {
        "under a file": (tmp_path / "a-file/sub/dir", "is a file, not a folder"),
        "link to an empty folder": (tmp_path / "link", "is a symbolic link"),
        "inside the registry": (registry / "pulled", "is inside the registry"),
        "not empty": (tmp_path / "full", "is not an empty folder"),
    }[case]
    listing = sorted(p.name for p in tmp_path.iterdir())
    result = run(built["ws"], built["env"], "pipeline.pull", NAME, "--registry", "data/quilt-registry",
                 "--dest", str(dest))
    assert result.returncode == 2
    assert says in one_line_error(result) and str(dest) in one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no staging folder, nothing new
    assert (tmp_path / "a-file").read_text() == "mine" and not any((tmp_path / "empty").iterdir())
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert tree(registry) == before


def test_a_killed_pulls_staging_folder_is_swept_by_the_next(built: dict, tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # exited: what it left is a leftover
    leftover = tmp_path / f".pulled.{pid}.pull"
    (leftover / "splits").mkdir(parents=True)
    (leftover / "splits/half.jpg").write_bytes(b"\xff\xd8")
    other = tmp_path / f".other.{os.getpid()}.pull"  # a live process's (this one): left alone
    other.mkdir()
    dest = tmp_path / "pulled"
    result = run(built["ws"], built["env"], "pipeline.pull", NAME, "--registry", "data/quilt-registry",
                 "--dest", str(dest))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not leftover.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "pulled"]


def listed(result: subprocess.CompletedProcess) -> list[tuple[str, bool, str]]:
    """(hash, latest, message) per line of ``pull --list``."""
    assert result.returncode == 0, result.stderr[-3000:]
    found = [LIST_LINE.fullmatch(line) for line in result.stdout.splitlines()]
    assert all(found), result.stdout
    return [(match[1], match[2] == "latest ", match[3]) for match in found]


def test_processes_publishing_at_once_lose_no_version(tmp_path: Path) -> None:
    env, registry = isolated_env(tmp_path / "home"), tmp_path / "shared-registry"
    published = publish_at_once(str(registry), "tests/shared", env, tmp_path / "work", publishers=3, rounds=3)
    found = listed(run(tmp_path, env, "pipeline.pull", "tests/shared", "--registry", str(registry), "--list"))
    assert sorted(h for h, _, _ in found) == sorted(h for hashes in published for h in hashes)  # all 9
    assert {message for _, _, message in found} == {f"p{i} round {r}" for i in range(3) for r in range(3)}
    latest = [h for h, is_latest, _ in found if is_latest]
    assert len(latest) == 1 and latest[0] in [hashes[-1] for hashes in published]  # one of the last round


def test_two_pulls_into_one_new_folder_at_once(built: dict, tmp_path: Path) -> None:
    registry, dest, info = built["ws"] / "data/quilt-registry", tmp_path / "pulled", built["info"]
    command = [sys.executable, "-m", "pipeline.pull", NAME, "--registry", str(registry), "--dest", str(dest),
               "--shards-only"]
    pulls = [subprocess.Popen(command, cwd=tmp_path, env=built["env"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for pull in pulls:
        out, err = pull.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(command, pull.returncode, out, err))
    assert sorted(r.returncode for r in results) == [0, 2], [r.stderr[-2000:] for r in results]
    refused = next(r for r in results if r.returncode == 2)
    error = one_line_error(refused)
    assert str(dest) in error and ("another pull" in error or "is not an empty folder" in error), error
    # The folder holds one whole, verified version; nothing else was left next to it.
    for key, path in built["sources"].items():
        assert (dest / key).read_bytes() == path.read_bytes(), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pulled"]
    verify = subprocess.run([quilt3_cli(), "verify", NAME, "--registry", registry.resolve().as_uri(), "--top-hash",
                             info["top_hash"], "--dir", str(dest)], env=built["env"], capture_output=True,
                            text=True, timeout=120)
    assert verify.returncode == 0 and "Verification succeeded" in verify.stdout, verify.stdout + verify.stderr


GARBAGE = {
    "bytes": b"not json\x00\xff",
    "empty": b"",
    "a JSON list": b"[1, 2]\n",
    "a bad entry": b'{"version": "v0"}\n{"logical_key": 5}\n',
}


@pytest.fixture
def damaged(built: dict, tmp_path: Path) -> Path:
    """A copy of the registry, to damage."""
    copy = tmp_path / "registry"
    shutil.copytree(built["ws"] / "data/quilt-registry", copy)
    return copy


@pytest.mark.parametrize("garbage", GARBAGE)
def test_relink_on_a_damaged_manifest_is_one_line(built: dict, damaged: Path, garbage: str) -> None:
    (damaged / ".quilt/packages" / built["info"]["top_hash"]).write_bytes(GARBAGE[garbage])
    result = run(damaged.parent, built["env"], "pipeline.pull", "--registry", str(damaged), "--relink")
    assert result.returncode == 1
    assert f"{NAME}@{built['info']['top_hash']}" in one_line_error(result) and "manifest is damaged" in result.stderr


@pytest.mark.parametrize("command, garbage", [(["--list"], "bytes"), (["--dest", "out"], "a bad entry")])
def test_list_and_install_of_a_damaged_registry_are_one_line(built: dict, damaged: Path, command: list[str],
                                                             garbage: str) -> None:
    manifest = damaged / ".quilt/packages" / built["info"]["top_hash"]
    kept = manifest.read_bytes()
    manifest.write_bytes(GARBAGE[garbage])  # (--list reads only a version's first line)
    result = run(damaged.parent, built["env"], "pipeline.pull", NAME, "--registry", str(damaged), *command)
    assert result.returncode == 1 and "manifest is damaged" in one_line_error(result)
    # A pointer that is not a top hash must not become a path quilt3 reads a "manifest" from.
    manifest.write_bytes(kept)
    (damaged / ".quilt/named_packages" / NAME / "latest").write_text("../../../../../../etc/passwd")
    result = run(damaged.parent, built["env"], "pipeline.pull", NAME, "--registry", str(damaged), *command)
    assert result.returncode == 1 and "does not hold a top hash" in one_line_error(result)
    assert not (damaged.parent / "out").exists()


@pytest.mark.parametrize("size", [0, 1, 8 * 1024 * 1024, 8 * 1024 * 1024 + 1])
def test_files_are_hashed_as_quilt3_hashes_them(tmp_path: Path, size: int) -> None:
    """The checksum a manifest records is quilt3's own (8 MiB parts), or quilt3 ``verify`` would fail."""
    import quilt3.data_transfer as transfer
    from quilt3.checksums import SHA256_CHUNKED_HASH_NAME
    from quilt3.util import PhysicalKey

    from pipeline.core.publish.registry import digest_file

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    task = transfer.FileChecksumTask.create(PhysicalKey.from_path(path), size, SHA256_CHUNKED_HASH_NAME)
    [quilt3s] = transfer.calculate_multipart_checksum([task])
    digest = digest_file(path)
    assert (digest.size, digest.checksum) == (size, quilt3s)
    assert digest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def hostile_tar(original: Path, case: str) -> bytes:
    """``original``'s samples with one spoilt as a hostile publisher would: a sample whose ``.json`` path
    climbs out of the folder (``../``), a symbolic link member, a member whose header claims more than the
    size cap (the bytes need not be there: the header is refused first)."""
    with tarfile.open(original) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        if case == "link":
            link = tarfile.TarInfo("Hamburger/zz_link.jpg")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
        if case == "escape":
            meta = {"dirname": "Hamburger", "label": "Hamburger", "path": "../../evil.jpg"}
            for ext, data in (("cls", b"0"), ("jpg", b"\xff\xd8evil"), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"../../evil.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    if case == "oversized":
        header = tarfile.TarInfo("Hamburger/zz_huge.jpg")
        header.size = MAX_IMAGE + 1
        return header.tobuf() + b"\xff\xd8" * 256 + out.getvalue()
    return out.getvalue()


@pytest.mark.parametrize("case, said", [("escape", "is not train/<class folder>/<file>"),
                                        ("link", "is not a plain file"),
                                        ("oversized", f"over the {MAX_IMAGE} allowed")])
def test_a_hostile_shard_is_refused_with_nothing_written(built: dict, tmp_path: Path, case: str, said: str) -> None:
    """A package whose train shard was spoilt before it was published (its index and the package's hashes
    agree with it: only the unpacking can refuse it): one line, exit 2, nothing in or beside DEST."""
    ws = tmp_path / "ws"
    shutil.copytree(built["ws"], ws, ignore=shutil.ignore_patterns("quilt-registry"))
    shards = ws / "data/shards"
    index = json.loads((shards / "index.json").read_text())
    entry = index["splits"]["train"]["shards"][0]
    data = hostile_tar(shards / entry["name"], case)
    (shards / entry["name"]).write_bytes(data)
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (shards / "index.json").write_text(json.dumps(index))
    packaged = run(ws, built["env"], "pipeline.stages.package")
    assert packaged.returncode == 0, packaged.stderr[-3000:]

    out = tmp_path / "out"
    out.mkdir()
    result = run(out, built["env"], "pipeline.pull", NAME, "--registry", str(ws / "data/quilt-registry"),
                 "--dest", str(out / "dest"))
    assert result.returncode == 2, result.stderr[-3000:]
    error = one_line_error(result)
    assert entry["name"] in error and said in error, error
    assert list(out.iterdir()) == []  # no DEST, no staging folder beside it
    assert not any(p.name.startswith("evil") for p in tmp_path.rglob("*"))


def test_shards_only_keeps_the_tars_as_published(built: dict, tmp_path: Path) -> None:
    """``--shards-only``: the package's files as they are (the tars, no class folders), for streaming."""
    dest = tmp_path / "pulled"
    result = run(tmp_path, built["env"], "pipeline.pull", NAME, "--registry", str(built["ws"] / "data/quilt-registry"),
                 "--dest", str(dest), "--shards-only")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"stream the shards: {dest / 'shards'}" in result.stdout and "unpacked" not in result.stdout
    assert set(tree(dest)) == set(built["sources"]) | {"README.md", "ATTRIBUTION.csv"}
    assert not (dest / "splits/train").exists()


def test_a_version_packaged_before_the_shards_alone_pulls_as_it_was(built: dict, tmp_path: Path) -> None:
    """The dataset package used to carry the class folders and the shards both: such a version installs as
    it is (nothing unpacked over its class folders)."""
    from pipeline.core.publish.registry import Registry, publish

    ws, registry = built["ws"], tmp_path / "registry"
    splits = ws / "data/splits"
    files = {**built["sources"], **{f"splits/{p.relative_to(splits).as_posix()}": p for p in splits.rglob("*.jpg")}}
    publish(Registry.parse(str(registry)), "tests/old-layout", files, {"kind": "dataset"}, "old layout")
    dest = tmp_path / "pulled"
    result = run(tmp_path, built["env"], "pipeline.pull", "tests/old-layout", "--registry", str(registry),
                 "--dest", str(dest))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unpacked" not in result.stdout
    assert tree(dest) == {key: path.read_bytes() for key, path in files.items()}
