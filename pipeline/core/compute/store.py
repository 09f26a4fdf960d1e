"""Where workers put photos and crops (``runtime.store``): one :class:`Store`, whichever of two kinds it is.

Empty: a folder (``data/images``, ``data/crops``; on a cluster, mounted at the same path on every worker),
which this workspace owns: photos named by ImageID, tidied after a run. An object store's URL: shared by any
number of runs, so photos are named by their content (:func:`photo_name`) and never deleted, crops made in a
run's own scratch folder (:func:`run_folder`) and copied home. :func:`open_store` decides the kind once; the
stages call the store's methods and never ask which kind it is. Reads, writes and listings go through
fsspec for both kinds. Why this layout needs no lock, and what a killed run leaves: docs/architecture.md
("Design notes of the core").
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import socket
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pipeline.core.base.errors import PipelineFailure, UserError
from pipeline.core.base.io import write_bytes
from pipeline.core.base.redact import public_url
from pipeline.core.base.staging import alive

IMAGES, CROPS = "images", "crops"
_MD5 = re.compile(r"[0-9a-f]{32}")
_EXTENSION = re.compile(r"[a-z0-9]{1,8}")
_RUN = re.compile(r"(?P<machine>[A-Za-z0-9-]+)\.(?P<pid>[0-9]{1,10})\.[0-9a-f]{8}")
#: a file name directly in a folder: no separator, not hidden (a temporary), never ``.`` or ``..``
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}")
T = TypeVar("T")


def _is_url(location: str) -> bool:
    """Is this a URL for fsspec (``s3://...``), rather than a path on this machine? Only this module asks."""
    return "://" in location


def join(location: str, *names: str) -> str:
    """``location/name/...``: one spelling for paths and URLs alike (fsspec's, with ``/``)."""
    return "/".join([location.rstrip("/"), *names])


def photo_name(md5: object, ext: object) -> str | None:
    """A photo's name in an object store, ``<md5 hex of the body>.<ext>``: its content, never its ImageID (the
    module's docstring says why); None when a record (doctored, or of no kept body) cannot name one."""
    if isinstance(md5, str) and isinstance(ext, str) and _MD5.fullmatch(md5) and _EXTENSION.fullmatch(ext):
        return f"{md5}.{ext}"
    return None


@functools.cache
def this_machine() -> str:
    """``<host name>-<tag>``: the one set of processes whose pids this process can see. The tag hashes the
    kernel's boot id (two machines, or one rebooted) and the pid namespace (two containers on one kernel), so
    a host name shared by machines or containers never makes one judge the other's processes dead."""
    host = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-")[:40] or "host"
    return f"{host}-{hashlib.sha256(_kernel_identity().encode()).hexdigest()[:8]}"


def _kernel_identity() -> str:
    """The boot id and pid namespace on Linux ('' elsewhere: the host name is then all there is)."""
    found = []
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            found.append(read())
        except OSError:
            pass
    return "\n".join(found)


def run_name() -> str:
    """``<machine>.<pid>.<random>``: a name no other run uses, from which a later run on this machine can tell
    whether its process is gone."""
    return f"{this_machine()}.{os.getpid()}.{secrets.token_hex(4)}"


def _left_by_dead_run(name: str) -> bool:
    """Is ``name`` a :func:`run_name` of this machine whose process is gone? (Another machine's: never.)"""
    match = _RUN.fullmatch(name)
    return match is not None and match["machine"] == this_machine() and not alive(int(match["pid"]))


def sweep_dead_runs(location: str) -> int:
    """Remove the folders in a remote ``location`` that killed runs of this machine left; return how many."""
    dead = [name for name in _entries(location, "directory") if _left_by_dead_run(name)]
    for name in dead:
        clear(join(location, name))
    return len(dead)


@contextmanager
def run_folder(location: str) -> Iterator[str]:
    """``<location>/<run name>``, a remote folder only this run writes, removed when the block ends however it
    ends; first the folders that killed runs of this machine left in ``location`` go (:func:`sweep_dead_runs`).
    Never anything else there: other runs, here or elsewhere, may be using their own."""
    swept = sweep_dead_runs(location)
    if swept:
        print(f"removed {swept} folder(s) that killed runs left in {public_url(location)}", file=sys.stderr)
    own = join(location, run_name())
    try:
        yield own
    finally:
        try:
            clear(own)
        except PipelineFailure as exc:  # the work is done; the next run on this machine removes the folder
            print(f"warning: {exc} (the next run on this machine removes it)", file=sys.stderr)


def _fs(location: str) -> tuple[Any, str]:
    """The fsspec file system of ``location`` and the path in it: a path is the local file system's."""
    if not _is_url(location):
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), location
    import fsspec

    try:
        return fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as exc:  # an unknown protocol, or its package is not installed
        raise UserError(f"runtime.store: cannot use {public_url(location)} ({exc})") from None


def _failure(what: str, location: str, exc: BaseException) -> PipelineFailure:
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return PipelineFailure(f"cannot {what} {public_url(location)}: {' '.join(detail.split())[:200]}")


def write_file(location: str, data: bytes) -> None:
    """Put ``data`` at ``location`` (a path or a URL) in one write; an object store never shows part of it."""
    fs, path = _fs(location)
    try:
        fs.pipe_file(path, data)
    except Exception as exc:  # noqa: BLE001 - fsspec back ends raise their own types
        raise _failure("write", location, exc) from None


def read_file(location: str) -> bytes:
    """The bytes at ``location`` (a path or a URL); OSError when they cannot be read."""
    fs, path = _fs(location)
    try:
        return fs.cat_file(path)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - report it as an OSError, as for a local file
        raise OSError(0, f"{type(exc).__name__}: {exc}") from None


def sizes(location: str) -> dict[str, int]:
    """``{file name: bytes}`` of the files directly in a folder ({} when there is none yet)."""
    return {name: int(entry.get("size") or 0) for name, entry in _entries(location, "file").items()}


def _entries(location: str, kind: str) -> dict[str, dict[str, Any]]:
    """``{name: listing entry}`` of the files or folders (``kind``) directly in a folder, fresh."""
    fs, path = _fs(location)
    try:
        fs.invalidate_cache(path)
        listing = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    except Exception as exc:  # noqa: BLE001
        raise _failure("list", location, exc) from None
    return {entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry for entry in listing if entry.get("type") == kind}


def clear(location: str) -> None:
    """Delete a folder and everything in it (nothing happens when there is none)."""
    fs, path = _fs(location)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001
        raise _failure("empty", location, exc) from None


def fetch_tree(location: str, local: Path) -> int:
    """Copy every file under a folder into ``local`` (same relative paths); return how many."""
    fs, path = _fs(location)
    base = path.rstrip("/")
    try:
        fs.invalidate_cache(base)
        remote = [name for name, info in fs.find(base, detail=True).items() if info.get("type") == "file"]
        targets = [str(local / os.path.relpath(name, base)) for name in remote]
        for target in {os.path.dirname(t) for t in targets}:
            os.makedirs(target, exist_ok=True)
        if remote:
            fs.get(remote, targets)
    except Exception as exc:  # noqa: BLE001
        raise _failure("copy from", location, exc) from None
    return len(remote)


@dataclass(frozen=True)
class Store(ABC):
    """Where one kind of file (photos or crops) goes: ``location``, a path or a URL, and nothing else, so tasks
    pickle it. The mechanics are shared (fsspec); each subclass holds one kind's policy, so callers never
    branch on the kind."""

    location: str
    #: the download manifest's columns :meth:`name_of` reads
    name_columns: ClassVar[tuple[str, ...]] = ("path",)

    def join(self, *names: str) -> str:
        return join(self.location, *names)

    def sizes(self) -> dict[str, int]:
        """``{file name: bytes}`` of what is here now: one listing answers for every file."""
        return sizes(self.location)

    def put(self, name: str, data: bytes) -> None:
        """Make ``name`` hold ``data``, whole or not at all (a killed writer leaves no half file there)."""
        write_file(self.join(name), data)

    @abstractmethod
    def name_of(self, path: object, md5: object) -> str | None:
        """The name here of the photo a manifest lists as ``path`` (``<ImageID>.<ext>``) with body ``md5``;
        None when the record (doctored, or of no kept body) names none."""

    @abstractmethod
    def discard(self, names: Iterable[str]) -> None:
        """Remove ``names`` (those that exist) where a run may remove anything."""

    @abstractmethod
    def check_writable(self) -> None:
        """Fail early with one line naming ``runtime.store`` when nothing can be written here."""

    @abstractmethod
    def in_own_folder(self, work: Callable[[Path], T]) -> T | None:
        """``work(folder)`` when this workspace owns the folder and may rearrange it (set photos aside, bring
        them back, sweep); None, doing nothing, where other runs share the store."""

    @abstractmethod
    def journals_at(self, batches_dir: Path) -> Path | None:
        """Where the workers journal what they finish: ``batches_dir`` when they reach it; None when they may
        share no folder with this process (then the stage journals the records they send home)."""

    @abstractmethod
    def staging(self, home: Path) -> AbstractContextManager[str]:
        """Where the workers put this run's files (a path or a URL); they are in ``home`` once the block ends
        without an error."""


class FolderStore(Store):
    """A folder of this workspace (``runtime.store`` empty; on a cluster, mounted at one path everywhere):
    photos named by ImageID, this run's to tidy, rearrange and remove from; written through a hidden
    temporary name and a rename (which :func:`pipeline.core.base.io.sweep_temporaries` sweeps after a kill);
    workers that reach it reach the journals beside it too."""

    def name_of(self, path: object, md5: object) -> str | None:
        return path if isinstance(path, str) and _PLAIN_NAME.fullmatch(path) else None

    def put(self, name: str, data: bytes) -> None:
        write_bytes(Path(self.location, name), data)

    def discard(self, names: Iterable[str]) -> None:
        for name in names:
            Path(self.location, name).unlink(missing_ok=True)

    def check_writable(self) -> None:
        """Nothing to check ahead: the stage makes the folder, and its first write fails with one line."""

    def in_own_folder(self, work: Callable[[Path], T]) -> T | None:
        return work(Path(self.location))

    def journals_at(self, batches_dir: Path) -> Path | None:
        return batches_dir

    @contextmanager
    def staging(self, home: Path) -> Iterator[str]:
        yield str(home.absolute())  # straight into the folder that becomes the output


class ObjectStore(Store):
    """An object store's folder, ``<runtime.store>/<kind>``, which runs that do not know each other share:
    photos named by their content, nothing ever deleted or rearranged, crops made in this run's own folder
    and copied home (docs/architecture.md, "Design notes of the core", says why)."""

    name_columns = ("path", "md5")

    def name_of(self, path: object, md5: object) -> str | None:
        return photo_name(md5, path.rpartition(".")[2]) if isinstance(path, str) else None

    def discard(self, names: Iterable[str]) -> None:
        """Never: another run's manifest may vouch for any photo here."""

    def check_writable(self) -> None:
        probe = self.join(f".probe.{run_name()}")  # this run's own name: never one another run may be deleting
        try:
            write_file(probe, b"")
            fs, path = _fs(probe)
            fs.rm_file(path)
        except PipelineFailure as exc:
            raise UserError(f"runtime.store: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - fsspec back ends raise their own types
            raise UserError(f"runtime.store: {_failure('delete', probe, exc)}") from None

    def in_own_folder(self, work: Callable[[Path], T]) -> T | None:
        return None

    def journals_at(self, batches_dir: Path) -> Path | None:
        return None  # the workers may share no folder with the stage

    @contextmanager
    def staging(self, home: Path) -> Iterator[str]:
        with run_folder(self.location) as own:
            yield own
            fetch_tree(own, home)


def open_store(runtime_store: str, kind: str, local: Path) -> Store:
    """The store of ``kind`` (:data:`IMAGES` or :data:`CROPS`): ``<runtime.store>/<kind>``, or, with
    ``runtime.store`` empty, the folder ``local`` (as an absolute path, for workers elsewhere)."""
    return ObjectStore(join(runtime_store, kind)) if runtime_store else FolderStore(str(local.absolute()))


def store_at(location: Store | Path | str) -> Store:
    """The store at ``location`` (a store already, a folder's path, or an object store's URL)."""
    if isinstance(location, Store):
        return location
    return ObjectStore(str(location)) if _is_url(str(location)) else FolderStore(str(Path(location).absolute()))
