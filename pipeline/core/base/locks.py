"""One run of a stage at a time in a workspace: a second run waits for the first instead of interleaving.

Two runs of one stage in one folder would otherwise build, sweep and swap the same outputs at once (one
run's clean-up deleting the other's half-built folder, a folder swapped in half full and recorded as
complete). The lock is ``flock`` on ``data/.locks/<stage>.lock``: the kernel releases it when its holder
ends, even by ``kill -9``, so a killed run can never leave it stuck, and nothing has to be cleaned up.
"""
from __future__ import annotations

import fcntl
import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

from pipeline.core.base import paths
from pipeline.core.base.errors import PipelineFailure

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def stage_lock(stage: str, folder: Path | None = None) -> Iterator[None]:
    """Hold the workspace's lock for ``stage`` while the block runs; wait (saying so) while another run has it."""
    folder = folder if folder is not None else paths.LOCKS_DIR
    with file_lock(folder / f"{stage}.lock", f"another {stage} run in this workspace"):
        yield


@contextmanager
def file_lock(path: Path, other: str) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (created, with its folders) while the block runs; while ``other`` holds it,
    say so once and wait. The holder's pid is written into the file for that message."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PipelineFailure(f"cannot create the lock {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            print(f"waiting for {other} (pid {holder}) to finish", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def locked(stage: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: the function runs under :func:`stage_lock` (for stage entry points that commands share)."""
    def wrap(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with stage_lock(stage):
                return function(*args, **kwargs)
        return run
    return wrap
