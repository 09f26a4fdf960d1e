"""What "auto" means on this machine: how many processes and DataLoader workers the runtime settings'
0 and -1 resolve to. The affinity mask, not the machine's core count, so containers and ``taskset`` are
respected."""
from __future__ import annotations

import ctypes
import os
import signal
import sys


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def processes(requested: int) -> int:
    """``requested`` processes, or one per usable core when it is 0."""
    return requested or usable_cores()


def loader_workers(requested: int) -> int:
    """DataLoader worker processes: ``requested``, or (-1) one per usable core, less one."""
    return requested if requested >= 0 else max(0, usable_cores() - 1)


def die_with_parent(parent: int) -> None:
    """Process-pool initializer: end this process when ``parent`` dies, even by ``kill -9``. Otherwise a worker
    would go on writing files beside the re-run that the user starts next, or wait forever for work."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
