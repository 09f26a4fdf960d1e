"""Every command and stage answers ``--help`` with plain text (no reST markup) and exit code 0."""
from __future__ import annotations

import importlib

import pytest

from pipeline.core.base.stages import STAGES

MODULES = [f"{stage.module}.__main__" for stage in STAGES] + [
    "pipeline.fetch", "pipeline.pull", "pipeline.predict", "pipeline.lr_find", "pipeline.report", "pipeline.demo"]


@pytest.mark.parametrize("module", MODULES)
def test_help_is_plain_text_and_exit_0(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(module).main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m ") and "``" not in text and ":mod:" not in text


def test_the_mirror_explains_every_option() -> None:
    from pipeline.mirror.__main__ import build_parser

    parser = build_parser()
    assert all(action.help for action in parser._actions)
    assert "``" not in parser.format_help()
