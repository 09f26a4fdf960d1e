"""The stages, in pipeline order, and the one way each runs: its lock held, its ``run``, its summary printed.

:data:`STAGES` is the one table of stages: dvc.yaml's stages are checked against it
(``tests/test_dvc_yaml.py``), params (:data:`~pipeline.core.base.params.TRACKED_SECTIONS`) and the package's
provenance read it. It lives in the core, not in ``pipeline.stages``, because params reads it and the core
imports no stage. docs/architecture.md ("Adding a stage") lists the steps that use it.
"""
from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pipeline.core.base.locks import stage_lock

if TYPE_CHECKING:
    from pipeline.core.base.params import Params


@dataclass(frozen=True)
class Stage:
    """One DVC stage: ``name`` (dvc.yaml's, and ``pipeline/stages/<name>/``), the params.yaml sections it
    tracks (dvc.yaml's ``params``, a section or keys of it), and what it makes: the dataset, the model or both."""

    name: str
    sections: tuple[str, ...]
    makes: frozenset[str]

    @property
    def module(self) -> str:
        """What ``python -m`` runs (dvc.yaml's ``cmd``)."""
        return f"pipeline.stages.{self.name}"


DATASET, MODEL = "dataset", "model"
_DATA, _MODEL = frozenset({DATASET}), frozenset({MODEL})
#: what the packages record: every section but ``package`` (where they go is not what they are)
RECORDED = ("labels", "source", "select", "crop", "clean", "audit", "split", "shards", "train", "evaluate")
STAGES: tuple[Stage, ...] = (
    Stage("metadata", ("source", "metadata"), _DATA),
    Stage("select", ("labels", "select"), _DATA),
    Stage("download", ("source", "download"), _DATA),
    Stage("crop", ("crop",), _DATA),
    Stage("clean", ("clean", "crop"), _DATA),
    Stage("audit", ("audit",), _DATA),
    Stage("split", ("split",), _DATA),
    Stage("shards", ("shards",), _DATA),
    Stage("train", ("train",), _MODEL),
    Stage("evaluate", ("evaluate",), _MODEL),
    Stage("package", ("package", *RECORDED), _DATA | _MODEL),  # it writes the packages' READMEs
)


def stage_names(makes: str | None = None) -> tuple[str, ...]:
    """The stages' names in pipeline order; with ``makes``, only those that make the dataset (or model)."""
    return tuple(stage.name for stage in STAGES if makes is None or makes in stage.makes)


def recorded_sections(makes: str) -> tuple[str, ...]:
    """The params a package of ``makes`` (the dataset or the model) records: those of :data:`RECORDED` that
    the stages making it track (package aside, which tracks them all to re-run when any changes)."""
    makers = [stage for stage in STAGES if makes in stage.makes and stage.name != "package"]
    return tuple(section for section in RECORDED if any(section in stage.sections for stage in makers))


class Summary(ABC):
    """What a stage's ``run`` returns: typed fields for the callers that read them (commands, tests), and
    the lines the runner prints. Each stage subclasses it (a frozen dataclass) and says its lines."""

    @abstractmethod
    def lines(self) -> list[str]:
        """What the runner prints when the stage is done."""

    def warnings(self) -> list[str]:
        """Lines for stderr (nothing is wrong with the run, but the user should look)."""
        return []


S = TypeVar("S", bound=Summary)


def run_stage(name: str, run: Callable[[Params], S], params: Params) -> S:
    """Run one stage's work in this workspace: under its lock (a second run waits, :func:`stage_lock`), then
    print its summary. Every stage's ``__main__`` and every command that runs a stage's work come through here."""
    with stage_lock(name):
        summary = run(params)
    for line in summary.lines():
        print(line)
    for line in summary.warnings():
        print(f"warning: {line}", file=sys.stderr)
    return summary
