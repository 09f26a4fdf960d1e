"""What the processes of tests/test_ratelimit.py run: a module of its own, so that a spawned process imports only
this and the board's code (the test module imports the mirror, seconds on a busy machine)."""
from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import time
from pathlib import Path

from pipeline.core.net.rate import MachineBoard, machine_board


class FrozenClock:
    """A clock shared by processes, moved only by the test."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self.value = context.RawValue("d", 1000.0)

    def __call__(self) -> float:
        return self.value.value


class StuckClock:
    """A clock that, once asked (inside the board's lock), says so and never answers: a process killed there
    dies holding the lock."""

    def __init__(self, asked: multiprocessing.synchronize.Event) -> None:
        self.asked = asked

    def __call__(self) -> float:
        self.asked.set()
        time.sleep(3600)
        return 0.0


def ask(board: MachineBoard, answers: multiprocessing.Queue) -> None:
    answers.put(board.take())


def use_board(key: str, rate: float, root: str, joined: multiprocessing.synchronize.Event) -> None:
    with machine_board(key, rate, Path(root)):
        joined.set()
        time.sleep(3600)


def take_in_the_lock(board: MachineBoard) -> None:
    board.take()
