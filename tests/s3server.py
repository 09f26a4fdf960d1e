"""A real S3-speaking server for tests: ``moto_server`` as a subprocess on a free 127.0.0.1 port.

Also a TCP proxy that can be cut mid-transfer: moto keeps its buckets in memory, so killing the
server itself would wipe the very state a test wants to inspect ("did a half-pushed version get
registered?"). Cutting the proxy looks the same to the client (reset connections, then refused
ones) while moto, behind it, keeps everything for inspection.

Its fixture ``s3_server`` reaches every test module through ``conftest.py`` (``pytest_plugins``); modules import
only the helpers: ``from s3server import aws_env``.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

#: Fake credentials: moto accepts any unless auth is switched on (see :meth:`S3Server.require_auth`).
ACCESS_KEY = "AKIAMOTOTESTKEY00001"
SECRET_KEY = "moto-test-secret-not-a-real-one"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """``moto_server`` in a subprocess; ``endpoint`` is its ``http://127.0.0.1:PORT``."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> S3Server:
        """Start on a free port (retrying if another process grabbed it first) and wait until it answers."""
        for _ in range(3):
            self.port = free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"moto_server did not start; see {self.log}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=1):
                    return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def require_auth(self, on: bool) -> None:
        """Switch moto's IAM authentication on (unknown access keys are refused) or off again."""
        body = b"0" if on else b"inf"
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=5):
            pass

    def client(self):
        """A boto3 S3 client talking to this server directly (for setting up and inspecting)."""
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


class _Proxy:
    """A TCP proxy on a free 127.0.0.1 port in front of ``upstream_port``; subclasses see each chunk a client
    sends (:meth:`_passes`) before it goes on, and may stop it there."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _passes(self, chunk: bytes) -> bool:
        """Called with each chunk a client sends, before it is forwarded; False: drop that connection."""
        return True

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if from_client and not self._passes(chunk):
                    return
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                _close(sock)

    def close(self) -> None:
        self.cut.set()
        _close(self._listener)
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)


class CutProxy(_Proxy):
    """A proxy in front of ``upstream_port`` that dies once ``cut_after`` request bytes went through.

    Dying means: stop accepting, and close every open connection, exactly what a client sees when
    the S3 server process goes away in the middle of an upload.
    """

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.cut_after = cut_after
        self.sent = 0
        super().__init__(upstream_port)

    def _passes(self, chunk: bytes) -> bool:
        with self._lock:
            self.sent += len(chunk)
            over = self.sent >= self.cut_after
        if over:
            self.close()
        return not over


_REQUEST_LINE = re.compile(rb"^(?:GET|PUT|POST|HEAD|DELETE) \S+ HTTP/1\.[01]\r?$", re.M)


class GateProxy(_Proxy):
    """A proxy in front of ``upstream_port`` that holds one request until the test lets it go: the first whose
    request line (``GET /bucket?list-type=2&prefix=... HTTP/1.1``) matches ``hold``, once a request line
    matching ``after`` went through. A test thus stops a real client (a stage in a subprocess) at an exact
    point of its work, does something meanwhile, and lets it go on: :attr:`held` is set while it waits,
    :meth:`release` lets it go (and every later request passes)."""

    def __init__(self, upstream_port: int, after: bytes, hold: bytes, limit: float = 120.0) -> None:
        self.after, self.hold, self.limit = re.compile(after), re.compile(hold), limit
        self.seen_after = False
        self.held = threading.Event()
        self._go = threading.Event()
        self.lines: list[bytes] = []  # every request line seen, for a failing test's message
        super().__init__(upstream_port)

    def _passes(self, chunk: bytes) -> bool:
        for line in _REQUEST_LINE.findall(chunk):
            with self._lock:
                self.lines.append(line.rstrip())
                stop = self.seen_after and not self.held.is_set() and bool(self.hold.search(line))
                self.seen_after = self.seen_after or bool(self.after.search(line))
                if stop:
                    self.held.set()
            if stop:
                self._go.wait(self.limit)  # bounded: a test that never releases does not hang this thread
        return True

    def release(self) -> None:
        self._go.set()

    def close(self) -> None:
        self.release()
        super().close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess that uses nothing from the user's home: no AWS profile or credentials,
    quilt3's config and cache inside ``home``, quilt3's usage metrics off, no proxy for 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QUILT_", "XDG_"))}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        AWS_CONFIG_FILE=str(home / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        XDG_DATA_HOME=str(home / "data"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_CONFIG_HOME=str(home / "config"),
        QUILT_DISABLE_USAGE_METRICS="true",
        NO_PROXY="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


def aws_env(endpoint: str, home: Path, **extra: str) -> dict[str, str]:
    """:func:`isolated_env` talking to ``endpoint`` with the test credentials, through the standard
    variables (``AWS_ENDPOINT_URL_S3`` is what boto3 reads for an S3-compatible store)."""
    settings = dict(AWS_ENDPOINT_URL_S3=endpoint, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                    AWS_DEFAULT_REGION=REGION)
    return isolated_env(home, **{**settings, **extra})


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto_server per test module (starting one takes about two seconds)."""
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()
