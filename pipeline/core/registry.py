"""quilt3 package registries (an S3 bucket, or a local folder): publish, list and install versions.

Used by :mod:`pipeline.stages.package` (publish) and :mod:`pipeline.pull` (list, install).

quilt3 is imported here and nowhere else (on first use, so ``--help`` and bad arguments answer at once),
after switching its usage metrics off: by default it posts a record of every API call to
telemetry.quiltdata.cloud, and this project's commands never reach out to the internet unasked.

Objects are stored by content, at ``<name>/objects/<sha256>``, not by file name. A newer version then
never overwrites an older version's bytes, even in a bucket without S3 versioning (MinIO's default), and
a file that several versions share is stored once. A local registry is self-contained the same way
(quilt3 itself would only record where the files are in the working directory, which the next pipeline
run rewrites).

quilt3 uploads every object first and registers a version last (its manifest, then its tags), so a
push that dies half way leaves no version behind; running it again finishes the job.

Failures (unknown package or hash, missing bucket, refused credentials, unreachable server) become
one-line errors here, so both commands report them the same way.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pipeline.core.errors import PipelineFailure, UserError
from pipeline.core.io import atomic_path
from pipeline.core.progress import track
from pipeline.core.s3 import bucket_url, check_bucket, error_code, translate

if TYPE_CHECKING:
    import quilt3

_NAME = re.compile(r"^[\w-]+/[\w-]+$")  # quilt3's own rule (quilt3.util.PACKAGE_NAME_FORMAT)
_HASH = re.compile(r"^[0-9a-f]{6,64}$")  # a top hash or a unique prefix of one, as quilt3 accepts
_NOT_FOUND_CODES = {"NoSuchKey", "404"}


def _quilt3() -> ModuleType:
    """quilt3, imported with its usage metrics off (see the module docstring)."""
    os.environ.setdefault("QUILT_DISABLE_USAGE_METRICS", "true")
    import quilt3

    return quilt3


def check_name(name: str, what: str = "package name") -> str:
    if not _NAME.match(name):
        raise UserError(f"{what} must look like owner/dataset (letters, digits, _ and -), got {name!r}")
    return name


def check_hash(top_hash: str) -> str:
    if not _HASH.match(top_hash):
        raise UserError(f"hash must be 6 to 64 lower-case hex digits (a top hash or its prefix), got {top_hash!r}")
    return top_hash


@dataclass(frozen=True)
class Registry:
    """Where packages live: ``url`` is what quilt3 takes, ``shown`` what messages and READMEs say."""

    url: str
    shown: str

    @classmethod
    def parse(cls, text: str, what: str = "registry") -> Registry:
        """``s3://bucket``, or a local folder (a path or a ``file://`` URL)."""
        scheme = urlsplit(text).scheme
        if scheme == "s3":
            url = bucket_url(text, what)
            return cls(url, url)
        if scheme == "file":
            path = Path(url2pathname(urlsplit(text).path))
        elif len(scheme) > 1:  # (a one-letter scheme is a Windows drive)
            raise UserError(f"{what} must be s3://bucket or a local folder, got {text!r}")
        else:
            path = Path(text)
        return cls(path.resolve().as_uri(), text)

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    @property
    def local_path(self) -> Path:
        return Path(url2pathname(urlsplit(self.url).path))


@dataclass(frozen=True)
class Version:
    top_hash: str
    timestamp: int  # when it was registered (seconds since the epoch)
    message: str
    latest: bool


@contextmanager
def registry_errors(registry: Registry, name: str, top_hash: str | None = None) -> Iterator[None]:
    """One-line errors for everything that can go wrong reading or writing ``name`` in ``registry``."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - what _translate does not know is re-raised as is
        translated = _translate(exc, registry, name, top_hash)
        if translated is None:
            raise
        raise translated from None


def _translate(exc: Exception, registry: Registry, name: str, top_hash: str | None) -> Exception | None:
    quilt3 = _quilt3()
    if isinstance(exc, FileNotFoundError) or error_code(exc) in _NOT_FOUND_CODES:
        return _not_found(registry, name, top_hash)
    where = f"{name}@{top_hash}" if top_hash else name
    if isinstance(exc, quilt3.exceptions.PackageException):
        return PipelineFailure(f"{where} in {registry.shown}: {str(exc).splitlines()[0]}")
    if isinstance(exc, quilt3.util.QuiltException):
        message = str(exc).splitlines()[0]
        if message.startswith("Found zero matches"):
            return _not_found(registry, name, top_hash)
        if message.startswith("Found multiple matches"):
            return UserError(f"hash prefix {top_hash} matches several versions of {name}: give more digits")
        return UserError(f"{where} in {registry.shown}: {message}")
    return translate(exc, registry.shown)


def _not_found(registry: Registry, name: str, top_hash: str | None) -> UserError:
    if not registry.is_s3 and not registry.local_path.is_dir():
        return UserError(f"no registry at {registry.shown} (no such folder)")
    if top_hash:
        return UserError(f"{name} has no version {top_hash} in {registry.shown} (see --list)")
    return UserError(f"no package {name} in {registry.shown}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def object_key(name: str, sha256: str) -> str:
    """Where a file's bytes live in a registry: by content (see the module docstring)."""
    return f"{name}/objects/{sha256}"


def publish(registry: Registry, name: str, files: Mapping[str, Path], meta: dict, message: str) -> str:
    """Store ``files`` (logical key -> file) with package metadata ``meta`` as a new version of ``name``;
    returns its top hash."""
    _check_access(registry)
    digests = {key: sha256_file(path) for key, path in track(files.items(), "hashing", "file")}
    with registry_errors(registry, name):
        if registry.is_s3:
            return _push(registry, name, files, digests, meta, message)
        return _build_local(registry, name, files, digests, meta, message)


def _check_access(registry: Registry) -> None:
    """For S3, a clear answer up front: quilt3 would hash and upload everything before finding out, and
    falls back to anonymous requests (whose errors say less) when a read is refused."""
    if registry.is_s3:
        check_bucket(_quilt3().get_boto3_session(), registry.url)


def _new_package(files: Mapping[str, Path], meta: dict) -> quilt3.Package:
    pkg = _quilt3().Package()
    for key, path in files.items():
        pkg.set(key, str(Path(path).resolve()))
    pkg.set_meta(meta)
    return pkg


def _push(registry: Registry, name: str, files: Mapping[str, Path], digests: Mapping[str, str], meta: dict,
          message: str) -> str:
    """Upload, then register. ``force``: a pipeline publishes what its inputs make, so the new version
    becomes latest whatever was latest before (older ones stay listed); ``dedupe``: pushing content
    that is already the latest version registers nothing new."""
    pkg = _new_package(files, meta)

    def dest(key: str, _entry: object) -> str:
        return f"{registry.url}/{object_key(name, digests[key])}"

    with contextlib.redirect_stdout(io.StringIO()):  # quilt3's chatter ("Run `quilt3 catalog` ...")
        pushed = pkg.push(name, registry=registry.url, dest=dest, message=message, force=True, dedupe=True)
    if pushed is pkg:  # deduped
        return dict(_quilt3().list_package_versions(name, registry=registry.url))["latest"]
    return pushed.top_hash


def _build_local(registry: Registry, name: str, files: Mapping[str, Path], digests: Mapping[str, str],
                 meta: dict, message: str) -> str:
    """Copy the objects into the local registry, then register."""
    stored = {}
    for key, path in track(files.items(), "storing", "file"):
        target = registry.local_path / object_key(name, digests[key])
        if not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
        stored[key] = target
    return _new_package(stored, meta).build(name, registry=registry.url, message=message)


def versions(registry: Registry, name: str) -> list[Version]:
    """Every registered version of ``name``, newest first, with its commit message."""
    quilt3 = _quilt3()
    _check_access(registry)
    with registry_errors(registry, name):
        pointers = list(quilt3.list_package_versions(name, registry=registry.url))
        latest = dict(pointers).get("latest")
        found = []
        for stamp, top_hash in pointers:
            if stamp == "latest":
                continue
            pkg = quilt3.Package.browse(name, registry=registry.url, top_hash=top_hash)
            # The commit message is manifest-level metadata; quilt3 has no public accessor for it.
            message = pkg._meta.get("message") or ""  # noqa: SLF001
            found.append(Version(top_hash, int(stamp), message, top_hash == latest))
    if not found:
        raise _not_found(registry, name, None)
    return sorted(found, key=lambda v: v.timestamp, reverse=True)


def install(registry: Registry, name: str, top_hash: str | None, dest: Path) -> tuple[str, int]:
    """Download a version (latest when ``top_hash`` is None) into the new folder ``dest``, checking every
    file against the package's hashes; returns (top hash, number of files).

    Files land in a sibling folder first and are renamed into place once all are there and verified, so
    ``dest`` is never half filled.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest} is not an empty folder: choose a new one")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _check_access(registry)
    staging = dest.with_name(f".{dest.name}.{os.getpid()}.pull")
    try:
        with registry_errors(registry, name, top_hash):
            pkg = _quilt3().Package.browse(name, registry=registry.url, top_hash=top_hash)
            pkg.fetch(f"{staging}/")
        if not pkg.verify(str(staging)):
            raise PipelineFailure(f"{name} in {registry.shown}: downloaded files do not match the package's hashes")
        if dest.exists():
            dest.rmdir()
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return pkg.top_hash, sum(1 for _ in pkg.walk())
