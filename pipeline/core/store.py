"""Where workers put photos and crops (``runtime.store``): a folder they all reach by path, or an object store.

- Empty (the default): ``data/images`` and ``data/crops`` here. With ``runtime.engine: dask`` on more than
  one machine, this working directory must then be on a file system every worker mounts **at the same
  path** (NFS, Lustre, EFS, a Kubernetes ReadWriteMany volume); workers are handed absolute paths.
- An object store's fsspec URL (``s3://bucket/prefix``, ``gs://...``): photos go to
  ``<store>/images/<ImageID>.<ext>`` and crops to ``<store>/crops/<label>/<ImageID>_<BoxIndex>.jpg``, one
  ``put`` each (an object store never shows half an object, so a killed worker leaves no partial file).
  The manifests, the shards and the DVC outputs stay where the stages expect them: the download's manifest
  in ``data/images``, and the crops are copied into ``data/crops`` once they are all made (clean, split and
  train read them there). The photos, the bulk, stay in the store.

Credentials and endpoints come from the store's own settings (for S3: AWS profiles, ``AWS_*`` variables,
``AWS_ENDPOINT_URL_S3`` for MinIO and other S3-compatible stores; see docs/s3.md), on every worker.
Locations are plain strings (a path or a URL), so tasks pickle them; fsspec caches one file system per
process. Failures are one line naming the location without credentials.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineFailure, UserError
from pipeline.core.safe import public_url

IMAGES, CROPS = "images", "crops"


def is_remote(location: str) -> bool:
    """Is this a URL for fsspec (``s3://...``), rather than a path on this machine?"""
    return "://" in location


def join(location: str, *names: str) -> str:
    return "/".join([location.rstrip("/"), *names]) if is_remote(location) else str(Path(location, *names))


def folder(store: str, kind: str, local: Path) -> str:
    """Where workers put ``kind`` (images or crops): ``<store>/<kind>``, or ``local`` as an absolute path."""
    return join(store, kind) if store else str(local.absolute())


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
    fs, path = _fs(location)
    try:
        fs.invalidate_cache(path)
        listing = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    except Exception as exc:  # noqa: BLE001
        raise _failure("list", location, exc) from None
    return {entry["name"].rstrip("/").rsplit("/", 1)[-1]: int(entry.get("size") or 0)
            for entry in listing if entry.get("type") == "file"}


def remove(location: str, names: list[str]) -> None:
    """Delete these files of a remote folder (one request per thousand on S3)."""
    if not names:
        return
    fs, path = _fs(location)
    try:
        fs.rm([f"{path.rstrip('/')}/{name}" for name in names])
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001
        raise _failure("delete in", location, exc) from None


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
    probe = join(store, ".pipeline-probe")
    try:
        write_file(probe, b"")
        fs, path = _fs(probe)
        fs.rm_file(path)
    except PipelineFailure as exc:
        raise UserError(f"runtime.store: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - fsspec back ends raise their own types
        raise UserError(f"runtime.store: {_failure('delete', probe, exc)}") from None
