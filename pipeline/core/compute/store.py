"""Where workers put photos and crops (``runtime.store``): a folder they all reach by path, or an object store
that any number of runs share.

- Empty (the default): ``data/images`` and ``data/crops`` here. With ``runtime.engine: dask`` on more than
  one machine, this working directory must then be on a file system every worker mounts **at the same
  path** (NFS, Lustre, EFS, a Kubernetes ReadWriteMany volume); workers are handed absolute paths.
- An object store's URL (``s3://bucket/prefix``, ``gs://...``, ``az://...``: the protocols
  :func:`pipeline.core.base.params.check_store_url` accepts): one ``put`` per file (an object store never shows
  half an object, so a killed worker leaves no partial file). The manifests, the shards and the DVC outputs
  stay where the stages expect them: the download's manifest in ``data/images``, and the crops are copied
  into ``data/crops`` once they are all made (clean, split and train read them there). The photos, the bulk,
  stay in the store.

**One store, many runs, no lock.** Runs that do not know each other use one store at once: a team, or
``dvc exp run --queue``, whose queued experiments all get the same ``runtime.store`` (no stage tracks
``runtime``). A lock would have to work on S3, where there is no ``flock``: a lock object needs an expiry a
killed run cannot leave stuck, hence clocks and fencing, and it would serialise whole runs. The layout needs
none, because no two runs ever write different bytes under one name, and no run deletes what another may
read:

- **Photos are named by their content**: ``<store>/images/<md5 of the body>.<ext>``
  (:func:`photo_name`). Two runs that fetch the same photo put the same bytes under the same name (the
  second put changes nothing a reader could see); two that get different bytes for one ImageID (Flickr's
  original and CVDF's resized copy, or an original its owner replaced) write two names. No run removes
  anything from ``<store>/images``: a photo no manifest lists any more costs storage, never another run's
  work (expire it with the store's lifecycle rules if it matters). Each workspace's manifest records
  ``path`` (``<ImageID>.<ext>``, as in ``data/images``) and ``md5``, from which the name follows, so the
  manifest is the same bytes with or without a store, and a re-run finds what it has from its journals and
  one listing. md5 suffices as a name: the only bodies anyone can give a colliding md5 are two they both
  made (a chosen-prefix collision), which are their own photos anyway; an original checked against Open
  Images' OriginalMD5 could only be matched by a second preimage, which nobody can compute for md5.
- **Crops are one run's scratch**: made in ``<store>/crops/<run>``, ``<run>`` being
  ``<machine>.<pid>.<random>`` (:func:`run_name`), copied into ``data/crops``, then removed by that run
  (:func:`run_folder`). A run killed before removing its folder leaves it; the next crop run on the same
  machine removes the folders of that machine whose process is gone (as :mod:`pipeline.core.base.staging` does
  for local folders), and never one of another machine, whose processes it cannot see. ``<machine>`` is the
  host name with a tag of the kernel's boot id and pid namespace: two containers with one host name (each
  its own pids) or two machines both called ``localhost`` are never taken for one. Nothing ever empties
  ``<store>/crops`` as a whole.

Credentials and endpoints come from the store's own settings (for S3: AWS profiles, ``AWS_*`` variables,
``AWS_ENDPOINT_URL_S3`` for MinIO and other S3-compatible stores; see docs/s3.md), on every worker.
Locations are plain strings (a path or a URL), so tasks pickle them; fsspec caches one file system per
process. Failures are one line naming the location without credentials.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core.base.errors import PipelineFailure, UserError
from pipeline.core.base.redact import public_url
from pipeline.core.base.staging import alive

IMAGES, CROPS = "images", "crops"
_MD5 = re.compile(r"[0-9a-f]{32}")
_EXTENSION = re.compile(r"[a-z0-9]{1,8}")
_RUN = re.compile(r"(?P<machine>[A-Za-z0-9-]+)\.(?P<pid>[0-9]{1,10})\.[0-9a-f]{8}")


def is_remote(location: str) -> bool:
    """Is this a URL for fsspec (``s3://...``), rather than a path on this machine?"""
    return "://" in location


def join(location: str, *names: str) -> str:
    return "/".join([location.rstrip("/"), *names]) if is_remote(location) else str(Path(location, *names))


def folder(store: str, kind: str, local: Path) -> str:
    """Where workers put ``kind`` (images or crops): ``<store>/<kind>``, or ``local`` as an absolute path."""
    return join(store, kind) if store else str(local.absolute())


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
    import fsspec

    try:
        return fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as exc:  # an unknown protocol, or its package is not installed
        raise UserError(f"runtime.store: cannot use {public_url(location)} ({exc})") from None


def _failure(what: str, location: str, exc: BaseException) -> PipelineFailure:
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return PipelineFailure(f"cannot {what} {public_url(location)}: {' '.join(detail.split())[:200]}")


def write_file(location: str, data: bytes) -> None:
    """Put ``data`` at a remote ``location`` in one request (no partial object is ever visible)."""
    fs, path = _fs(location)
    try:
        fs.pipe_file(path, data)
    except Exception as exc:  # noqa: BLE001 - fsspec back ends raise their own types
        raise _failure("write", location, exc) from None


def read_file(location: str) -> bytes:
    """The bytes at ``location`` (a path or a URL); OSError when they cannot be read."""
    if not is_remote(location):
        return Path(location).read_bytes()
    fs, path = _fs(location)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - report it as an OSError, as for a local file
        raise OSError(0, f"{type(exc).__name__}: {exc}") from None


def sizes(location: str) -> dict[str, int]:
    """``{file name: bytes}`` of the files directly in a remote folder ({} when there is none yet)."""
    return {name: int(entry.get("size") or 0) for name, entry in _entries(location, "file").items()}


def _entries(location: str, kind: str) -> dict[str, dict[str, Any]]:
    """``{name: listing entry}`` of the files or folders (``kind``) directly in a remote folder, fresh."""
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
    """Delete a remote folder and everything in it (nothing happens when there is none)."""
    fs, path = _fs(location)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001
        raise _failure("empty", location, exc) from None


def fetch_tree(location: str, local: Path) -> int:
    """Copy every file under a remote folder into ``local`` (same relative paths); return how many."""
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


def check_writable(store: str) -> None:
    """Fail early, here, with one line naming ``runtime.store``, when the store cannot be written (no such
    bucket, no rights, no credentials), rather than once per photo on every worker."""
    if not store:
        return
    probe = join(store, f".probe.{run_name()}")  # this run's own name: never one another run may be deleting
    try:
        write_file(probe, b"")
        fs, path = _fs(probe)
        fs.rm_file(path)
    except PipelineFailure as exc:
        raise UserError(f"runtime.store: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - fsspec back ends raise their own types
        raise UserError(f"runtime.store: {_failure('delete', probe, exc)}") from None
