"""``python -m pipeline.stages.audit``: the DVC stage audit (see :mod:`pipeline.stages.audit.stage`)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.locks import stage_lock
from pipeline.core.base.params import load_params
from pipeline.stages.audit.stage import run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.audit",
        description=f"Audit the crops clean kept: label issues, outliers, blurry/dark/light/flat/odd-aspect crops. "
        f"Writes {paths.AUDIT_LEDGER} (kept, flagged or rejected, and why; the split leaves out the rejected) "
        f"and {paths.AUDIT_REPORT}/index.html. Settings: the audit section of params.yaml.",
    )
    parser.parse_args(argv)
    params = load_params()
    with stage_lock("audit"):
        summary = run(params)
    decisions, seconds = summary["decisions"], summary["seconds"]
    issues = "".join(f"; {n} {kind}" for kind, n in summary["issues"].items() if n)
    print(f"audit: {decisions['kept']} kept, {decisions['flagged']} flagged, {decisions['rejected']} rejected of "
          f"{summary['crops']} crops{issues} ({summary['embeddings_computed']} embeddings computed, "
          f"{seconds['embeddings']:.1f} s) -> {paths.AUDIT_LEDGER}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
