"""quilt3 package registries (an S3 bucket, or a local folder): publish, list, install and relink versions.

Used by :mod:`pipeline.stages.package` (publish) and :mod:`pipeline.pull` (list, install, relink); quilt3 is
imported here alone, late, with its telemetry and manifest cache off. Objects are stored by content
(``<name>/objects/<sha256><ext>``); a publish uploads objects, then the manifest, then registers the version
under a lock per package name (:mod:`.registry_lock`), so a publish that dies half way leaves no version and
two runs never lose each other's. Failures are one-line errors. Why each of these: docs/architecture.md
("Design notes of the core").
"""
from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pipeline.core.base.errors import PipelineFailure, UserError
from pipeline.core.base.io import atomic_path
from pipeline.core.base.package_names import check_package_name
from pipeline.core.base.progress import track
from pipeline.core.base.staging import staging_path, sweep
from pipeline.core.publish.registry_lock import local_lock, s3_lock
from pipeline.core.publish.s3 import (
    bucket_url,
    check_bucket,
    error_code,
    existing_sizes,
    put_new,
    translate,
    upload_files,
)

if TYPE_CHECKING:
    import quilt3

_HASH = re.compile(r"[0-9a-f]{6,64}")  # a top hash or a unique prefix of one, as quilt3 accepts
_TOP_HASH = re.compile(r"[0-9a-f]{64}")
_NOT_FOUND_CODES = {"NoSuchKey", "404"}
#: extensions an object keeps (quilt3 picks its reader by them); anything else is stored without one
_OBJECT_SUFFIX = re.compile(r"^\.[a-z0-9]{1,16}$")
PULL_STAGING = "pull"
#: where a local registry's files are written before they are renamed or linked into place
_LOCAL_TMP = ".pipeline/tmp"
#: seconds tried for a version pointer's name before giving up
_POINTER_TRIES = 10
#: the longest first line of a manifest (a version's metadata) read
_MAX_FIRST_LINE = 16 * 1024 * 1024


def _quilt3() -> ModuleType:
    """quilt3, imported with its usage metrics off (see the module docstring)."""
    os.environ.setdefault("QUILT_DISABLE_USAGE_METRICS", "true")
    os.environ["QUILT_DISABLE_CACHE"] = "true"
    import quilt3

    return quilt3


def check_name(name: str, what: str = "package name") -> str:
    """``name`` when it follows the package-name grammar (:mod:`pipeline.core.base.package_names`), else a
    one-line :class:`UserError` naming ``what``."""
    try:
        return check_package_name(name)
    except ValueError as exc:
        raise UserError(f"{what} {exc}") from None


def check_hash(top_hash: str) -> str:
    if not _HASH.fullmatch(top_hash):
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


@dataclass(frozen=True)
class Digest:
    """What a file's entry needs: its size, the SHA-256 that names its object (:func:`object_key`) and
    quilt3's own checksum of it (``sha2-256-chunked``: SHA-256 of the SHA-256s of 8 MiB parts), which
    manifests, top hashes and ``verify`` go by."""

    size: int
    sha256: str
    checksum: str


def digest_file(path: Path) -> Digest:
    """Both hashes of ``path`` in one read, the parts cut where quilt3 cuts them
    (``quilt3.checksums.get_checksum_chunksize``) and combined by quilt3's own code. A file of one part (up
    to 8 MiB: a crop, a shard, a manifest) is hashed once: that part's SHA-256 is the file's."""
    checksums = _quilt3().checksums
    part_size = checksums.get_checksum_chunksize(path.stat().st_size)
    one_part = path.stat().st_size <= part_size
    whole, parts, size = hashlib.sha256(), [], 0
    with open(path, "rb") as f:
        while True:
            part, length = checksums.SHA256MultiPartChecksumCalculator(), 0
            while length < part_size and (block := f.read(min(1 << 20, part_size - length))):
                if not one_part:
                    whole.update(block)
                part.update(block)
                length += len(block)
            if not length:
                break
            parts.append(part.digest(length))
            size += length
    if one_part and len(parts) > 1:
        raise PipelineFailure(f"{path} grew while it was hashed (another process writing it?); run again")
    sha256 = parts[0].checksum.hex() if one_part and parts else whole.hexdigest()
    return Digest(size, sha256, checksums.SHA256MultiPartChecksumCalculator.combine_parts(parts))


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

    ``accept_latest`` sees the latest version's package metadata and may refuse it (raise): first before
    anything is hashed or stored (a refusal comes at once), and again under the registry's lock if another
    run registered a version meanwhile. When the latest version already holds exactly this content (files,
    metadata and message: what the top hash covers), nothing is registered.
    """
    check_name(name)
    with registry_errors(registry, name):
        _check_access(registry)
        latest = _latest_hash(registry, name)
        if latest is not None and accept_latest is not None:
            accept_latest(_user_meta(_version_meta(registry, name, latest)))
    if not registry.is_s3:
        _sweep_local(registry, name)
    digests = {key: digest_file(path) for key, path in track(files.items(), "hashing", "file")}
    with registry_errors(registry, name):
        pkg = _new_package(registry, name, digests, meta, message)
        top_hash = pkg.top_hash
        if latest == top_hash:
            return Published(top_hash, added=False)
        _store_objects(registry, name, files, digests)
        manifest = io.BytesIO()
        pkg.dump(manifest)
        _write(registry, _backend(registry).manifest_pk(name, top_hash), manifest.getvalue())
        with _publish_lock(registry, name) as fence:
            return _register(registry, name, top_hash, latest, accept_latest, fence)


def _check_access(registry: Registry) -> None:
    """For S3, a clear answer up front: quilt3 falls back to anonymous requests (whose errors say less)
    when a read is refused, and nothing should be hashed or uploaded before finding out."""
    if registry.is_s3:
        check_bucket(_quilt3().get_boto3_session(), registry.url)


def _sweep_local(registry: Registry, name: str) -> None:
    """What killed runs left: half-copied objects (``.<object>.<pid>.tmp``, see
    :func:`pipeline.core.base.io.atomic_path`) and half-written registry files (:func:`_local_tmp`)."""
    for folder in (registry.local_path / name / "objects", registry.local_path / _LOCAL_TMP):
        sweep(folder, "tmp")


def _backend(registry: Registry) -> object:
    """quilt3's layout of ``registry`` (where manifests and pointers go: ``.quilt/...``)."""
    return _quilt3().backends.get_package_registry(registry.url)


@functools.cache
def _s3_clients() -> object:
    """quilt3's S3 clients, made once per process (each new client loads botocore's models again): a signed
    one (AWS's settings, or a Quilt catalog login's credentials), and an anonymous one for public buckets."""
    return _quilt3().data_transfer.S3ClientProvider()


def _s3_client() -> object:
    """The client for writing (quilt3's own writes use it too)."""
    return _s3_clients().standard_client


def _read(where: quilt3.util.PhysicalKey) -> bytes:
    """A registry file's bytes (a pointer): a local file, or an S3 object read as quilt3 reads it (anonymously
    when the bucket is public and there are no credentials)."""
    if where.is_local():
        return Path(where.path).read_bytes()
    params = {"Bucket": where.bucket, "Key": where.path}
    client = _s3_clients().find_correct_client(_quilt3().data_transfer.S3Api.GET_OBJECT, where.bucket, params)
    with client.get_object(**params)["Body"] as body:
        return body.read()


def _latest_hash(registry: Registry, name: str) -> str | None:
    """The top hash ``latest`` points at, or None when ``name`` has no version here (yet)."""
    try:
        data = _read(_backend(registry).pointer_latest_pk(name))
    except Exception as exc:  # noqa: BLE001 - only "not there" is an answer; the rest goes to registry_errors
        if isinstance(exc, FileNotFoundError) or error_code(exc) in _NOT_FOUND_CODES:
            return None
        raise
    return _pointed_hash(data, registry, name, "latest")


def _pointed_hash(data: bytes, registry: Registry, name: str, pointer: str) -> str:
    """A pointer's top hash; anything else there would become a path (``../``) quilt3 reads a manifest from."""
    text = data.decode("ascii", errors="replace").strip()
    if not _TOP_HASH.fullmatch(text):
        raise PipelineFailure(f"{name} in {registry.shown}: its pointer {pointer!r} does not hold a top hash "
                              "(the registry is damaged)")
    return text


def _browse(registry: Registry, name: str, top_hash: str) -> quilt3.Package:
    """A version's manifest, read; one that is not a quilt3 manifest (damaged, or not one at all) is a
    one-line failure instead of whatever quilt3's parser trips over."""
    try:
        return _quilt3().Package.browse(name, registry=registry.url, top_hash=top_hash)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError) as exc:
        if translate(exc, registry.shown) is not None:  # botocore's own ValueErrors (a bad endpoint)
            raise
        problem = type(exc).__name__
    # Raised here, not in the except block: the parser's frames (and its progress bar, which prints when
    # it is collected) go now, not after the error line.
    raise PipelineFailure(f"{name}@{top_hash} in {registry.shown}: its manifest is damaged, not a quilt3 "
                          f"manifest ({problem})")


def _version_meta(registry: Registry, name: str, top_hash: str) -> dict:
    """A version's own line (its package metadata and message): the manifest's first line, read without
    the rest, which lists every file (a dataset's can be large; checks and ``--list`` need only this)."""
    line = _first_line(_backend(registry).manifest_pk(name, top_hash))
    try:
        meta = json.loads(line)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise PipelineFailure(f"{name}@{top_hash} in {registry.shown}: its manifest is damaged, not a quilt3 "
                              "manifest (its first line is not a JSON object)")
    return meta


def _first_line(where: quilt3.util.PhysicalKey) -> bytes:
    """The first line of a registry file (at most :data:`_MAX_FIRST_LINE` bytes of it)."""
    if where.is_local():
        with open(where.path, "rb") as f:
            return f.readline(_MAX_FIRST_LINE)
    params = {"Bucket": where.bucket, "Key": where.path}
    client = _s3_clients().find_correct_client(_quilt3().data_transfer.S3Api.GET_OBJECT, where.bucket, params)
    read = b""
    with client.get_object(**params)["Body"] as body:
        while b"\n" not in read and len(read) < _MAX_FIRST_LINE and (chunk := body.read(1 << 16)):
            read += chunk
    return read.split(b"\n", 1)[0][:_MAX_FIRST_LINE]


def _user_meta(meta: dict) -> dict:
    """The package metadata in a version's own line (what the publishing run gave)."""
    user_meta = meta.get("user_meta")
    return user_meta if isinstance(user_meta, dict) else {}


def _new_package(registry: Registry, name: str, digests: Mapping[str, Digest], meta: dict,
                 message: str) -> quilt3.Package:
    """The version to register: each entry already points at its object here, with quilt3's checksum, so
    nothing is read or copied again by quilt3. Its workflow (a bucket's ``.quilt/workflows``) applies as it
    would to a quilt3 push."""
    quilt3 = _quilt3()
    pkg = quilt3.Package()
    for key, digest in digests.items():
        where = quilt3.util.PhysicalKey.from_url(registry.object_url(name, object_name(digest.sha256, key)))
        checksum = {"type": quilt3.checksums.SHA256_CHUNKED_HASH_NAME, "value": digest.checksum}
        pkg.set(key, quilt3.packages.PackageEntry(where, digest.size, checksum, None))
    pkg.set_meta(meta)
    # quilt3 has no public way to set a message or run the workflow without its push; these are what it calls
    pkg._validate_with_workflow(registry=_backend(registry), workflow=..., name=name, message=message)  # noqa: SLF001
    pkg._set_commit_message(message)  # noqa: SLF001
    return pkg


def _store_objects(registry: Registry, name: str, files: Mapping[str, Path], digests: Mapping[str, Digest]) -> None:
    """Put each file at its object key, unless an object of its size is there already (the key is its
    content's hash): into the folder, or up to the bucket with boto3's managed transfer (multipart from
    8 MiB: quilt3 8.0's own upload needs checksums that not every S3 server returns)."""
    keys = {key: object_key(name, digests[key].sha256, key) for key in files}
    if registry.is_s3:
        client, bucket = _s3_client(), urlsplit(registry.url).netloc
        there = existing_sizes(client, bucket, f"{name}/objects/")
        upload_files(client, bucket, {keys[k]: path for k, path in files.items()
                                      if there.get(keys[k]) != digests[k].size})
        return
    for key, path in track(files.items(), "storing", "file"):
        target = registry.local_path / keys[key]
        if not target.is_file() or target.stat().st_size != digests[key].size:
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)


@contextmanager
def _publish_lock(registry: Registry, name: str) -> Iterator[Callable[[], None]]:
    """Hold the registry's lock of ``name`` (:mod:`pipeline.core.publish.registry_lock`); yields the check to run
    before each registering write (an S3 lease can run out; a held ``flock`` cannot)."""
    if registry.is_s3:
        with s3_lock(_s3_client(), urlsplit(registry.url).netloc, name, registry.shown) as lease:
            yield lease.check
    else:
        with local_lock(registry.local_path, name, registry.shown):
            yield lambda: None


def _register(registry: Registry, name: str, top_hash: str, seen: str | None,
              accept_latest: Callable[[dict], None] | None, fence: Callable[[], None]) -> Published:
    """Under the lock: make the manifest (already stored) a version of ``name``, and its latest.

    ``seen`` is the latest top hash the checks ran on; another run may have registered one since."""
    latest = _latest_hash(registry, name)
    if latest == top_hash:
        return Published(top_hash, added=False)
    if latest is not None and latest != seen and accept_latest is not None:
        accept_latest(_user_meta(_version_meta(registry, name, latest)))
    backend = _backend(registry)
    if backend.revision_pointers:  # quilt3's first layout: a version is a pointer named by its time
        _add_version_pointer(registry, backend, name, top_hash, fence)
    else:  # its second: a version is its manifest, already there
        fence()
    _write(registry, backend.pointer_latest_pk(name), top_hash.encode())
    return Published(top_hash, added=True)


def _add_version_pointer(registry: Registry, backend: object, name: str, top_hash: str,
                         fence: Callable[[], None]) -> None:
    """Add the pointer ``.quilt/named_packages/<name>/<seconds>`` to ``top_hash`` under a name no one holds.

    quilt3 names it by the time in seconds and overwrites what is there, so two versions registered within
    one second kept one. Here it is created only if absent, else the next second is tried, and it is read
    back after (a store that ignored the condition would show another hash)."""
    for _ in range(_POINTER_TRIES):
        stamp = int(time.time())
        pointer = backend.pointer_pk(name, str(stamp))
        fence()
        if _create(registry, pointer, top_hash.encode()) and _read(pointer).decode().strip() == top_hash:
            return
        time.sleep(max(0.0, stamp + 1 - time.time()))
    raise PipelineFailure(f"{name} in {registry.shown}: could not add a version pointer in {_POINTER_TRIES} "
                          "tries (other runs registering every second?): nothing was registered; run it again")


def _write(registry: Registry, where: quilt3.util.PhysicalKey, data: bytes) -> None:
    """Write a registry file whole: a reader sees the old one or the new one (a local file is renamed into
    place; an S3 PUT is atomic)."""
    if where.is_local():
        with _local_tmp(registry) as tmp:
            tmp.write_bytes(data)
            Path(where.path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, where.path)
        return
    _s3_client().put_object(Bucket=where.bucket, Key=where.path, Body=data)


def _create(registry: Registry, where: quilt3.util.PhysicalKey, data: bytes) -> bool:
    """Write a registry file whole, only if there is none yet; False when there was one."""
    if where.is_local():
        target = Path(where.path)
        with _local_tmp(registry) as tmp:
            tmp.write_bytes(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp, target)  # atomic, and fails if the name is taken
            except FileExistsError:
                return False
        return True
    return put_new(_s3_client(), where.bucket, where.path, data) is not None


@contextmanager
def _local_tmp(registry: Registry) -> Iterator[Path]:
    """A temporary file in the registry's own ``.pipeline/tmp`` (on the file system of the files it will
    become, so it can be renamed or linked there; never in a folder quilt3 lists), removed after."""
    tmp = staging_path(registry.local_path / _LOCAL_TMP, uuid.uuid4().hex, "tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def versions(registry: Registry, name: str) -> list[Version]:
    """Every registered version of ``name``, newest first, with its commit message."""
    quilt3 = _quilt3()
    with registry_errors(registry, name):
        _check_access(registry)
        pointers = list(quilt3.list_package_versions(name, registry=registry.url))
        latest = dict(pointers).get("latest")
        latest = latest and _pointed_hash(latest.encode(), registry, name, "latest")
        found = []
        for stamp, top_hash in pointers:
            if not stamp.isdigit():  # "latest", or a stray file in the pointers' folder
                continue
            top_hash = _pointed_hash(top_hash.encode(), registry, name, stamp)
            message = _version_meta(registry, name, top_hash).get("message") or ""
            found.append(Version(top_hash, int(stamp), str(message), top_hash == latest))
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


def install(registry: Registry, name: str, top_hash: str | None, dest: Path,
            finish: Callable[[Path], None] | None = None, only: Collection[str] | None = None) -> Installed:
    """Download a version (latest when ``top_hash`` is None) into the new folder ``dest``, checking every
    file against the package's hashes; ``finish`` then works on the checked files (the dataset's shards are
    unpacked into class folders) before they move into place, so a refusal there leaves ``dest`` untouched.
    ``only``: just these logical keys (those the version has), e.g. the tables ``--diff`` reads.

    Files land in a hidden sibling folder first (``.<dest>.<pid>.pull``) and are renamed into place once all
    are there and verified, so ``dest`` is never half filled; the sibling folders of killed pulls are
    swept first. Of two pulls into one new ``dest`` at once, the first to finish renames its folder into
    place (a rename replaces an empty folder, never a full one) and the other says so in one line.
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
            wanted = top_hash or _latest_hash(registry, name)
            if wanted is None:
                raise _not_found(registry, name, None)
            pkg = _browse(registry, name, wanted)
            moved = _point_here(pkg, registry, name)
            chosen = pkg if only is None else pkg.filter(lambda key, _: key in only)
            chosen.fetch(f"{staging}/")
        if not chosen.verify(str(staging)):
            raise PipelineFailure(f"{name} in {registry.shown}: downloaded files do not match the package's hashes")
        if finish is not None:
            finish(staging)
        _move_into_place(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Installed(pkg.top_hash, sum(1 for _ in chosen.walk()), moved)


def _move_into_place(staging: Path, dest: Path) -> None:
    """Rename the finished folder onto ``dest``: atomic, and refused by the kernel when ``dest`` is a
    folder that is not empty (another pull got there first) or not a folder."""
    try:
        os.rename(staging, dest)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise UserError(f"--dest {dest} was filled by something else (another pull?) while this pull ran: "
                            "left as it is; choose a new folder") from None
        raise PipelineFailure(f"--dest {dest}: cannot move the pulled files into place ({exc.strerror})") from None


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
            pointers = quilt3.list_package_versions(name, registry=registry.url)
            for top_hash in sorted({_pointed_hash(h.encode(), registry, name, stamp) for stamp, h in pointers}):
                pkg = _browse(registry, name, top_hash)
                if _point_here(pkg, registry, name):
                    manifest = io.BytesIO()
                    pkg.dump(manifest)
                    _write(registry, _backend(registry).manifest_pk(name, top_hash), manifest.getvalue())
                    changed += 1
    return changed
