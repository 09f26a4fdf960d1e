"""A DVC remote on S3 (moto_server), set up exactly as docs/s3.md says: ``dvc push`` from one clone,
``dvc pull`` into a fresh clone restores the pipeline's outputs byte for byte."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from s3server import S3Server, isolated_env

# A one-stage pipeline standing in for ours: its outputs are a folder and a file, as data/splits and
# data/package.json are.
MAKE = """\
import pathlib, sys
out = pathlib.Path("out")
(out / "train").mkdir(parents=True, exist_ok=True)
for i in range(3):
    (out / "train" / f"{i}.bin").write_bytes(bytes(range(256)) * (i + 1) * 40)
pathlib.Path("summary.txt").write_text("three files\\n")
"""
DVC_YAML = f"""\
stages:
  make:
    cmd: '"{sys.executable}" make.py'
    deps: [make.py]
    outs: [out, summary.txt]
"""


def sh(cwd: Path, env: dict[str, str], *cmd: str) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def dvc(cwd: Path, env: dict[str, str], *args: str) -> str:
    return sh(cwd, env, sys.executable, "-m", "dvc", *args)


def outputs(root: Path) -> dict[str, bytes]:
    files = [root / "summary.txt", *sorted((root / "out").rglob("*"))]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files if p.is_file()}


def test_dvc_push_then_pull_into_a_fresh_clone(s3_server: S3Server, tmp_path: Path) -> None:
    s3_server.create_bucket("dvc-store")
    env = isolated_env(
        tmp_path / "home",
        # Credentials and region the AWS way; the endpoint comes from the remote's config, as documented.
        AWS_ACCESS_KEY_ID="AKIAMOTOTESTKEY00001", AWS_SECRET_ACCESS_KEY="moto-test-secret-not-a-real-one",
        AWS_DEFAULT_REGION="us-east-1", DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site"),
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_GLOBAL=str(tmp_path / "gitconfig"),
    )
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "make.py").write_text(MAKE)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    sh(repo, env, "git", "init", "-q")
    dvc(repo, env, "init", "-q")
    dvc(repo, env, "repro")
    dvc(repo, env, "remote", "add", "-d", "storage", "s3://dvc-store/pipeline")
    dvc(repo, env, "remote", "modify", "storage", "endpointurl", s3_server.endpoint)
    sh(repo, env, "git", "add", "-A")
    sh(repo, env, "git", "commit", "-q", "-m", "pipeline")
    dvc(repo, env, "push")
    stored = s3_server.client().list_objects_v2(Bucket="dvc-store", Prefix="pipeline/")
    assert stored.get("KeyCount", 0) >= 4  # three files, the summary, and the folder's listing

    clone = tmp_path / "clone"
    sh(tmp_path, env, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "out").exists()  # only DVC's pointers travel with git
    dvc(clone, env, "pull")
    assert outputs(clone) == outputs(repo)
    assert len(outputs(clone)) == 4
    assert "up to date" in dvc(clone, env, "status").lower()  # dvc.lock agrees with the pulled files
