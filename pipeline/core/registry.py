"""quilt3 package registries (an S3 bucket, or a local folder): publish, list, install and relink versions.

Used by :mod:`pipeline.stages.package` (publish) and :mod:`pipeline.pull` (list, install, relink).

quilt3 is imported here and nowhere else (on first use, so ``--help`` and bad arguments answer at once),
after switching its usage metrics off: by default it posts a record of every API call to
telemetry.quiltdata.cloud, and this project's commands never reach out to the internet unasked.

Objects are stored by content, at ``<name>/objects/<sha256><extension>``, not by file name. A newer version
then never overwrites an older version's bytes, even in a bucket without S3 versioning (MinIO's default), a
file that several versions share is stored once, and the extension (``.parquet``, ``.json``, ``.csv``) is
what quilt3's own readers go by: ``pkg["manifests/clean.parquet"]()`` gives a DataFrame. A local registry
is self-contained the same way (quilt3 itself would only record where the files are in the working
directory, which the next pipeline run rewrites).

quilt3 records absolute locations (``file:///...``, ``s3://bucket/...``) in its manifests, so a registry
folder that was moved or copied still lists its versions but points at the old place. Since every object's
name is its content, :func:`install` reads each one from the registry it was asked for, wherever the
manifest says it was; :func:`relink` rewrites a local registry's manifests for its new place, so plain
quilt3 reads it again (quilt3's top hash does not cover locations, so no version changes).

quilt3 uploads every object first and registers a version last (its manifest, then its tags), so a
push that dies half way leaves no version behind; running it again finishes the job. Content identical to
the latest version is not registered again (:class:`Published` says so).

Failures (unknown package or hash, missing bucket, refused credentials, unreachable server, a bad AWS
setting) become one-line errors here, so both commands report them the same way.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pipeline.core.errors import PipelineFailure, UserError
from pipeline.core.io import atomic_path
from pipeline.core.progress import track
from pipeline.core.s3 import bucket_url, check_bucket, error_code, translate
from pipeline.core.staging import staging_path, sweep

if TYPE_CHECKING:
    import quilt3

_NAME = re.compile(r"^[\w-]+/[\w-]+$")  # quilt3's own rule (quilt3.util.PACKAGE_NAME_FORMAT)
_HASH = re.compile(r"^[0-9a-f]{6,64}$")  # a top hash or a unique prefix of one, as quilt3 accepts
_NOT_FOUND_CODES = {"NoSuchKey", "404"}
#: extensions an object keeps (quilt3 picks its reader by them); anything else is stored without one
_OBJECT_SUFFIX = re.compile(r"^\.[a-z0-9]{1,16}$")
PULL_STAGING = "pull"


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

    def object_url(self, name: str, filename: str) -> str:
        """Where the object ``filename`` (``<sha256><extension>``) of package ``name`` lives here."""
        if self.is_s3:
            return f"{self.url}/{name}/objects/{filename}"
        return (self.local_path / name / "objects" / filename).as_uri()


@dataclass(frozen=True)
class Version:
    top_hash: str
    timestamp: int  # when it was registered (seconds since the epoch)
    message: str
    latest: bool


@dataclass(frozen=True)
class Published:
    top_hash: str
    added: bool  # False: the content was already the latest version, nothing was registered


@dataclass(frozen=True)
class Installed:
    top_hash: str
    files: int
    moved: bool  # the registry's manifests point elsewhere (it was moved or copied): see relink()


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
    translated = translate(exc, registry.shown)
    if translated is None and isinstance(exc, OSError) and not registry.is_s3:
        return PipelineFailure(f"{where} in {registry.shown}: {exc.strerror or exc}")
    return translated


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


def object_name(sha256: str, logical_key: str) -> str:
    """An object's file name: its content hash, plus the logical key's extension (see the module docstring)."""
    suffix = PurePosixPath(logical_key).suffix.lower()
    return sha256 + (suffix if _OBJECT_SUFFIX.match(suffix) else "")


def object_key(name: str, sha256: str, logical_key: str) -> str:
    """Where a file's bytes live in a registry, relative to its root."""
    return f"{name}/objects/{object_name(sha256, logical_key)}"


def publish(registry: Registry, name: str, files: Mapping[str, Path], meta: dict, message: str,
            accept_latest: Callable[[dict], None] | None = None) -> Published:
    """Store ``files`` (logical key -> file) with package metadata ``meta`` as a new version of ``name``.

    ``accept_latest`` sees the latest version's package metadata first and may refuse it (raise) before
    anything is stored. When the latest version already holds exactly this content (files, metadata and
    message: what the top hash covers), nothing is stored or registered.
    """
    with registry_errors(registry, name):
        _check_access(registry)
        latest = _latest(registry, name)
    if latest is not None and accept_latest is not None:  # before hashing: a refusal comes at once
        accept_latest(latest._meta.get("user_meta") or {})  # noqa: SLF001 - see versions()
    if not registry.is_s3:
        _sweep_local(registry, name)
    digests = {key: sha256_file(path) for key, path in track(files.items(), "hashing", "file")}
    if latest is not None and _same_content(latest, files, digests, meta, message):
        return Published(latest.top_hash, added=False)
    with registry_errors(registry, name):
        if registry.is_s3:
            return Published(_push(registry, name, files, digests, meta, message), added=True)
        return Published(_build_local(registry, name, files, digests, meta, message), added=True)


def _check_access(registry: Registry) -> None:
    """For S3, a clear answer up front: quilt3 would hash and upload everything before finding out, and
    falls back to anonymous requests (whose errors say less) when a read is refused."""
    if registry.is_s3:
        check_bucket(_quilt3().get_boto3_session(), registry.url)


def _sweep_local(registry: Registry, name: str) -> None:
    """Half-copied objects of a killed run (``.<object>.<pid>.tmp``, see :func:`pipeline.core.io.atomic_path`)."""
    sweep(registry.local_path / name / "objects", "tmp")


def _latest(registry: Registry, name: str) -> quilt3.Package | None:
    """The latest version of ``name``, or None when there is none yet."""
    try:
        return _quilt3().Package.browse(name, registry=registry.url)
    except Exception as exc:  # noqa: BLE001 - only "not there" is an answer; the rest goes to registry_errors
        if isinstance(exc, FileNotFoundError) or error_code(exc) in _NOT_FOUND_CODES:
            return None
        raise


def _same_content(pkg: quilt3.Package, files: Mapping[str, Path], digests: Mapping[str, str], meta: dict,
                  message: str) -> bool:
    """Does ``pkg`` hold these files (by content), this metadata and this message?"""
    recorded = pkg._meta  # noqa: SLF001 - the manifest's own line; quilt3 has no public accessor for message
    if recorded.get("user_meta") != json.loads(json.dumps(meta)) or (recorded.get("message") or "") != message:
        return False
    entries = dict(pkg.walk())
    if set(entries) != set(files):
        return False
    return all(
        PurePosixPath(entries[key].physical_key.path).name == object_name(digests[key], key)
        and entries[key].size == path.stat().st_size
        for key, path in files.items()
    )


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
        return f"{registry.url}/{object_key(name, digests[key], key)}"

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
        target = registry.local_path / object_key(name, digests[key], key)
        if not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
        stored[key] = target
    return _new_package(stored, meta).build(name, registry=registry.url, message=message)


def versions(registry: Registry, name: str) -> list[Version]:
    """Every registered version of ``name``, newest first, with its commit message."""
    quilt3 = _quilt3()
    with registry_errors(registry, name):
        _check_access(registry)
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


def check_dest(dest: Path, registry: Registry, what: str = "--dest") -> None:
    """Refuse, before anything is written, a destination that would lose or mix data: a link (its target
    would be replaced), something that is not an empty folder, a path under a file, a folder inside the
    registry itself."""
    if dest.is_symlink():
        raise UserError(f"{what} {dest} is a symbolic link: give the folder itself")
    if dest.exists():
        if not dest.is_dir() or any(dest.iterdir()):
            raise UserError(f"{what} {dest} is not an empty folder: choose a new one")
    else:
        existing = next(parent for parent in dest.absolute().parents if parent.exists())
        if not existing.is_dir():
            raise UserError(f"{what} {dest}: {existing} is a file, not a folder")
    if not registry.is_s3 and dest.resolve().is_relative_to(registry.local_path.resolve()):
        raise UserError(f"{what} {dest} is inside the registry {registry.shown}: choose a folder outside it")


def install(registry: Registry, name: str, top_hash: str | None, dest: Path) -> Installed:
    """Download a version (latest when ``top_hash`` is None) into the new folder ``dest``, checking every
    file against the package's hashes.

    Files land in a hidden sibling folder first (``.<dest>.<pid>.pull``) and are renamed into place once all
    are there and verified, so ``dest`` is never half filled; the sibling folders of killed pulls are
    swept first.
    """
    check_dest(dest, registry)
    with registry_errors(registry, name, top_hash):
        _check_access(registry)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--dest {dest}: cannot create {dest.parent} ({exc.strerror})") from None
    sweep(dest.parent, PULL_STAGING)
    staging = staging_path(dest.parent, dest.name, PULL_STAGING)
    try:
        with registry_errors(registry, name, top_hash):
            pkg = _quilt3().Package.browse(name, registry=registry.url, top_hash=top_hash)
            moved = _point_here(pkg, registry, name)
            pkg.fetch(f"{staging}/")
        if not pkg.verify(str(staging)):
            raise PipelineFailure(f"{name} in {registry.shown}: downloaded files do not match the package's hashes")
        if dest.exists():
            dest.rmdir()
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Installed(pkg.top_hash, sum(1 for _ in pkg.walk()), moved)


def _point_here(pkg: quilt3.Package, registry: Registry, name: str) -> bool:
    """Point every entry stored under ``<name>/objects/`` at that object in ``registry`` (they are named by
    content, so it is the same object wherever the manifest says it was); True if any pointed elsewhere."""
    physical_key = _quilt3().util.PhysicalKey
    moved = False
    for key, entry in list(pkg.walk()):
        old = entry.physical_key
        path = PurePosixPath(old.path)
        if path.parts[-4:-1] != (*name.split("/"), "objects"):
            continue  # not one of ours: left as it is
        new = physical_key.from_url(registry.object_url(name, path.name))
        if (old.bucket, old.path) != (new.bucket, new.path):
            pkg.set(key, entry.with_physical_key(new))
            moved = True
    return moved


def relink(registry: Registry) -> int:
    """Rewrite the manifests of a moved or copied local registry to point at its objects where it is now,
    so plain quilt3 reads it again; returns how many manifests changed. Top hashes stay the same."""
    if registry.is_s3:
        raise UserError("--relink rewrites a local registry folder; an S3 registry is read where it is")
    quilt3 = _quilt3()
    if not (registry.local_path / ".quilt").is_dir():
        raise UserError(f"no registry at {registry.shown} (no .quilt folder)")
    changed = 0
    for name in quilt3.list_packages(registry.url):
        with registry_errors(registry, name):
            for top_hash in sorted({h for stamp, h in quilt3.list_package_versions(name, registry=registry.url)}):
                pkg = quilt3.Package.browse(name, registry=registry.url, top_hash=top_hash)
                if _point_here(pkg, registry, name):
                    with atomic_path(registry.local_path / ".quilt" / "packages" / top_hash) as tmp, \
                            open(tmp, "w", encoding="utf-8") as f:
                        pkg.dump(f)
                    changed += 1
    return changed
