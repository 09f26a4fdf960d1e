"""One registration at a time per package name in a registry that runs which do not know each other share.

Why a lock at all, and what it covers: :mod:`pipeline.core.publish.registry`. Two kinds, one per place: in a
local registry folder, ``flock`` on ``<registry>/.pipeline/locks/<name>.lock``, which the kernel releases
when its holder ends (even by ``kill -9``); in an S3 bucket, which has no ``flock``, an object created only
if absent, with a lease (:data:`LEASE_SECONDS`) that a waiter may take over once it has run out, and that
its holder checks before each write that matters (:meth:`S3Lease.check`). So a killed holder never leaves
the lock stuck. How the S3 lease is judged and taken over: docs/architecture.md ("Design notes of the core").
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import botocore.exceptions

from pipeline.core.base.errors import PipelineFailure
from pipeline.core.base.locks import file_lock
from pipeline.core.publish.s3 import error_code, put_new, replace_if

#: where the locks live, in a registry folder and in a bucket (never a package name: those start with a letter or digit)
LOCKS = ".pipeline/locks"
#: how long an S3 lock holds when its holder does not remove it (killed); a holder needs seconds
LEASE_SECONDS = 60
#: a holder stops writing this long before its lease ends (time for the request under way)
SAFETY_SECONDS = 15
#: a lease longer than this in a lock object is not believed (a doctored body must not block forever)
MAX_LEASE_SECONDS = 600
#: how long a publish waits for the lock before it gives up (holders that keep coming, a server that fails)
MAX_WAIT_SECONDS = 900
POLL_SECONDS = 0.5
_MAX_BODY = 4096


def lock_name(name: str) -> str:
    return f"{LOCKS}/{name}.lock"


@contextmanager
def local_lock(root: Path, name: str, shown: str) -> Iterator[None]:
    """Hold the publish lock of ``name`` in the local registry ``root`` (``shown`` in messages)."""
    with file_lock(root / lock_name(name), f"another publish of {name} to {shown}"):
        yield


@dataclass
class S3Lease:
    """The S3 lock this process holds: its object's ETag, and when it was taken (``time.monotonic``)."""

    client: object
    bucket: str
    key: str
    etag: str
    taken: float
    lease: float = LEASE_SECONDS

    def check(self) -> None:
        """Raise :class:`PipelineFailure` unless the lock is still this one's, with time left on its lease."""
        if time.monotonic() - self.taken > self.lease - SAFETY_SECONDS or self._current_etag() != self.etag:
            raise PipelineFailure(f"lost the publish lock s3://{self.bucket}/{self.key} (held longer than its "
                                  f"{self.lease:.0f} s lease): nothing was registered; run the publish again")

    def _current_etag(self) -> str | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"]
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey"):
                return None
            raise


@dataclass(frozen=True)
class _Held:
    """A lock object someone holds: its ETag, its body's holder, and whether its lease ran out."""

    etag: str
    holder: str
    expired: bool


@contextmanager
def s3_lock(client: object, bucket: str, name: str, shown: str) -> Iterator[S3Lease]:
    """Hold the publish lock of ``name`` in the bucket (``shown`` in messages); wait, saying so once, while
    another run holds it; take it over when its lease ran out."""
    lease = _acquire(client, bucket, lock_name(name), name, shown)
    try:
        yield lease
    finally:
        _release(lease, shown)


def _body() -> bytes:
    token = uuid.uuid4().hex  # makes every holder's body, and so its ETag, its own
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": token,
                       "lease_seconds": LEASE_SECONDS}).encode()


def _acquire(client: object, bucket: str, key: str, name: str, shown: str) -> S3Lease:
    body = _body()
    deadline = time.monotonic() + MAX_WAIT_SECONDS
    said = False
    while True:
        taken = time.monotonic()
        etag = put_new(client, bucket, key, body)
        if etag is None and (held := _read(client, bucket, key)) is not None and held.expired:
            etag = replace_if(client, bucket, key, body, held.etag)
            if etag is not None:
                print(f"note: took over the publish lock of {name} in {shown} from {held.holder} (its "
                      f"lease ran out: killed?)", file=sys.stderr, flush=True)
        # Read back: a store that ignored the condition would have let a second writer replace this body.
        if etag is not None and _etag(client, bucket, key) == etag:
            return S3Lease(client, bucket, key, etag, taken)
        if time.monotonic() > deadline:
            raise PipelineFailure(f"{name} in {shown}: another publish has held the lock {key} for over "
                                  f"{MAX_WAIT_SECONDS // 60} minutes; try again later")
        if not said:
            held = _read(client, bucket, key)
            who = f" ({held.holder})" if held else ""
            print(f"waiting for another publish of {name} to {shown}{who} to finish", file=sys.stderr, flush=True)
            said = True
        time.sleep(POLL_SECONDS)


def _etag(client: object, bucket: str, key: str) -> str | None:
    try:
        return client.head_object(Bucket=bucket, Key=key)["ETag"]
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey"):
            return None
        raise


def _read(client: object, bucket: str, key: str) -> _Held | None:
    """The lock object now, or None when there is none (released meanwhile)."""
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey"):
            return None
        raise
    with response["Body"] as stream:
        text = stream.read(_MAX_BODY)
    try:
        fields = json.loads(text)
        lease = min(float(fields["lease_seconds"]), MAX_LEASE_SECONDS)
        holder = f"host {str(fields['host'])[:64]}, pid {int(fields['pid'])}"
    except (ValueError, TypeError, KeyError):
        lease, holder = LEASE_SECONDS, "an unreadable holder"
    date = response["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
    now = parsedate_to_datetime(date) if date else datetime.now(UTC)
    age = (now - response["LastModified"]).total_seconds()
    return _Held(response["ETag"], holder, age >= lease)


def _release(lease: S3Lease, shown: str) -> None:
    """Remove the lock if it is still this one's (after a lease ran out, another run may hold it now).

    A lock that cannot be removed (the server went away) expires with its lease: a note, not a failure,
    since what it guarded is done or was never started."""
    try:
        if _etag(lease.client, lease.bucket, lease.key) == lease.etag:
            lease.client.delete_object(Bucket=lease.bucket, Key=lease.key)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        print(f"note: could not remove the publish lock {lease.key} in {shown} ({type(exc).__name__}); it "
              f"expires in {LEASE_SECONDS} s", file=sys.stderr)
