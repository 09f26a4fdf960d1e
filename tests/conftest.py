"""Shared fixtures: the local Open Images mirror (real HTTP on 127.0.0.1), a scratch working directory, and
the fixtures of the helper modules, so that no test module imports a fixture by hand: ``s3server.py``'s
moto server and ``hostile.py``'s hostile metadata server (as plugins), ``trainkit.py``'s training ones (below,
importing torch only for the tests that ask for them)."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from pipeline.mirror import Mirror

if TYPE_CHECKING:
    from trainkit import TrainedWorkspace

pytest_plugins = ["s3server", "hostile"]


@pytest.fixture(scope="session")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """Faults on: every fault kind on its own ImageIDs (see ``mirror.truth``), 12 images per label, 320x240."""
    with Mirror(root=tmp_path_factory.mktemp("mirror"), labels=("Hamburger", "Sandwich"), images_per_label=12,
                size=(320, 240), faults=True, seed=0) as m:
        yield m


@pytest.fixture(scope="session")
def clean_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """No faults: every image downloads, decodes and is kept."""
    with Mirror(root=tmp_path_factory.mktemp("clean-mirror"), labels=("Hamburger", "Sandwich"), images_per_label=12,
                size=(320, 240), faults=False, seed=0) as m:
        yield m


@dataclass
class Workspace:
    """A temporary working directory (the cwd during the test), where stages find params.yaml and data/."""

    path: Path

    def write_params(self, params: dict[str, Any]) -> Path:
        """Write ``params.yaml``; dotted keys (``"source.base_url"``, as from ``Mirror.params_overrides()``)
        are nested, so ``ws.write_params({**mirror.params_overrides(), "download": {"rate": 0}})`` works."""
        nested: dict[str, Any] = {}
        for key, value in params.items():
            node = nested
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            if isinstance(value, dict) and isinstance(node.get(leaf), dict):
                node[leaf].update(value)
            else:
                node[leaf] = value
        path = self.path / "params.yaml"
        path.write_text(yaml.safe_dump(nested, sort_keys=False))
        return path


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.chdir(tmp_path)
    return Workspace(tmp_path)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for the module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    from trainkit import single_thread

    with single_thread():
        yield


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedWorkspace:
    """A workspace where ``python -m pipeline.stages.train`` (its ``main``) has run: one run a session (of each
    xdist worker that runs one of its readers), shared by the train, evaluate and predict tests."""
    from trainkit import train_once

    return train_once(tmp_path_factory.getbasetemp())


# --- running in parallel (pytest-xdist: ``-n 2`` in pyproject.toml) -------------------------------------------

#: the heaviest modules (whole DVC pipelines), handed out first so that neither worker is left with one at the end
HEAVIEST_FIRST = ("test_versions", "test_demo")


def pytest_configure(config: pytest.Config) -> None:
    """Give each xdist worker a runtime and a temporary folder of its own. The download rate boards are files
    keyed by server under ``$XDG_RUNTIME_DIR`` (or the temporary folder, where a subprocess has no
    ``XDG_RUNTIME_DIR``): every test server is on 127.0.0.1, so two workers would otherwise book on one board
    and slow each other's downloads down."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    own = Path(tempfile.mkdtemp(prefix=f"openimages-tests-{worker}-"))
    for name, folder in (("XDG_RUNTIME_DIR", own / "runtime"), ("TMPDIR", own / "tmp")):
        folder.mkdir(mode=0o700)
        os.environ[name] = str(folder)
    tempfile.tempdir = None  # tempfile.gettempdir() reads TMPDIR again
    config.add_cleanup(lambda: shutil.rmtree(own, ignore_errors=True))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The heaviest modules first: xdist (``--dist loadfile``: a module's tests, and so its module fixtures, on
    one worker) hands out the modules in this order."""
    items.sort(key=lambda item: item.path.stem not in HEAVIEST_FIRST)
