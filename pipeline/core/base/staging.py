"""Hidden staging folders and files named after the process that owns them, and the sweep of those whose
process is gone.

A command that builds something next to where it will land (a pulled dataset, a package's README) works in
``.<stem>.<pid>.<kind>`` and renames or deletes it at the end. ``kill -9`` skips that end, so every run
first sweeps the leftovers of dead processes: the pid in the name tells a killed run's folder from one a
second live run is still using, so two runs at once never delete each other's work.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def staging_path(parent: Path, stem: str, kind: str) -> Path:
    """``parent/.<stem>.<this pid>.<kind>``: a hidden sibling only this process writes."""
    return parent / f".{stem}.{os.getpid()}.{kind}"


def owner_pid(path: Path, kind: str) -> int | None:
    """The pid in a name made by :func:`staging_path` with this ``kind``, else None."""
    parts = path.name.rsplit(".", 2)
    if len(parts) != 3 or not parts[0].startswith(".") or parts[2] != kind or not parts[1].isdigit():
        return None
    return int(parts[1])


def alive(pid: int) -> bool:
    """Is there a process ``pid`` (one of another user counts as alive: it is not ours to judge)?"""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(parent: Path, kind: str) -> list[Path]:
    """Delete the ``.*.<pid>.<kind>`` folders and files in ``parent`` whose process is gone; return them."""
    if not parent.is_dir():
        return []
    removed = []
    for path in sorted(parent.glob(f".*.*.{kind}")):
        pid = owner_pid(path, kind)
        if pid is None or alive(pid):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
