"""Every stage's ``python -m pipeline.stages.<name>``, once: ``--help``, the stage's flags (each overriding
one params key, named in errors as the user typed it), the params, and the stage's ``run`` under
:func:`~pipeline.core.base.stages.run_stage`. The stage's module is imported only after the flags are read,
so ``--help`` and bad flags answer at once; it is found by name, as dvc.yaml finds it."""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.core.base.params import load_params
from pipeline.core.base.stages import run_stage


@dataclass(frozen=True)
class Flag:
    """A flag that overrides one params key: ``--processes N`` for ``runtime.crop_processes``."""

    name: str
    key: str
    help: str
    metavar: str
    type: Callable[[str], Any] = str
    nargs: str | None = None


def stage_main(name: str, description: str, argv: Sequence[str] | None, flags: Sequence[Flag] = ()) -> int:
    """Read the flags and params, then run ``pipeline.stages.<name>.stage.run`` under the stage's lock."""
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{name}", description=description)
    for flag in flags:
        parser.add_argument(flag.name, dest=flag.key, type=flag.type, nargs=flag.nargs, metavar=flag.metavar,
                            help=flag.help)
    given = {key: value for key, value in vars(parser.parse_args(argv)).items() if value is not None}
    params = load_params(overrides=given or None, flags={flag.key: flag.name for flag in flags})
    run_stage(name, importlib.import_module(f"pipeline.stages.{name}.stage").run, params)
    return 0
