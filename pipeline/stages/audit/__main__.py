"""``python -m pipeline.stages.audit``: the flags; the work is :func:`pipeline.stages.audit.stage.run`."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.stage_cli import stage_main

DESCRIPTION = (f"Audit the crops clean kept: label issues, outliers, blurry/dark/light/flat/odd-aspect crops. "
               f"Writes {paths.AUDIT_LEDGER} (kept, flagged or rejected, and why; the split leaves out the rejected) "
               f"and {paths.AUDIT_REPORT}/index.html. Settings: the audit section of params.yaml.")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("audit", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
