"""What the benchmarks count besides wall time: CPU, ours and the rest of the machine's.

The machine is shared, so every figure goes out with the CPU other processes used meanwhile: the machine's
busy CPU time over the run, less our own. One home for both counts, so every benchmark means the same by
them. (``train_bench.py`` keeps its own: it runs on GPU machines that have torch and little else.)
"""
from __future__ import annotations

import resource

import psutil


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (nor waiting for I/O), since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def waited_children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu_seconds() -> float:
    """CPU seconds of this process and all its children: the ended ones and the ones still running."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2]) + waited_children_cpu_seconds()
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total
