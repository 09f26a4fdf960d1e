"""Errors a user can fix, and the one place that turns them into a one-line message.

Every command's ``main()`` is wrapped by :func:`run_cli`, so a bad label, a bad params key or an
unreachable server ends in a single clear line and a meaningful exit code instead of a traceback. The line
is the last guard for secrets too: any URL credential in it is blanked before it is printed.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from pipeline.core.base.redact import scrub

#: Exit codes shared by every command.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input the user can fix (a params key, a label, a path). Exit code 2."""

    exit_code = EXIT_BAD_INPUT


class PipelineFailure(Exception):
    """The work could not be done (server unreachable, disk full, ...). Exit code 1."""

    exit_code = EXIT_FAILURE


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and map known errors to one line on stderr plus an exit code."""
    try:
        code = main(argv)
    except (UserError, PipelineFailure) as exc:
        print(f"error: {' '.join(scrub(str(exc)).split())}", file=sys.stderr)  # one line, no credentials
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (``... | head``): stop quietly, as Unix tools do; pointing stdout at
        # /dev/null keeps Python's final flush from raising again at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    return EXIT_OK if code is None else int(code)
