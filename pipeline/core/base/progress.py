"""Progress on long work, wherever the output goes.

On a terminal it is tqdm's bar. When stderr is a pipe or a file (CI logs, ``nohup``, ``dvc repro`` in a
script) tqdm would either stay silent or fill the log with carriage returns, so instead a short line goes
to stderr every few seconds and once at the end::

    download: 1,200/2,000 img (60%), 38.2 img/s, about 21 s left; ok=1180 not_found=20

``PIPELINE_PROGRESS_SECONDS`` sets the interval (default 5; 0 prints a line for every update). Work that
ends within one interval prints nothing: the command's own summary says enough.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TextIO, TypeVar

from tqdm import tqdm

DEFAULT_EVERY = 5.0
T = TypeVar("T")


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("PIPELINE_PROGRESS_SECONDS", DEFAULT_EVERY)))
    except ValueError:
        return DEFAULT_EVERY


class Progress:
    """``with Progress(total, "download", "img") as bar: bar.update(); bar.note("ok=3")``."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, initial: int = 0,
                 stream: TextIO | None = None, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic, leave: bool = True,
                 enabled: bool = True) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.stream = stream or sys.stderr
        self.every = _interval() if every is None else every
        self.clock = clock
        self.started = self.last = clock()
        self.initial = initial
        self.postfix = ""
        self.enabled = enabled
        interactive = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, leave=leave,
                        dynamic_ncols=True) if interactive else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.clock() - self.last >= self.every:
            self._line()

    def note(self, text: str) -> None:
        """A short status after the counts (``ok=3 failed=1``)."""
        self.postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def write(self, text: str) -> None:
        """A line of its own (an epoch's summary), without breaking the bar."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)  # also when disabled: it is the command's output

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done > self.initial and self.clock() - self.started >= self.every:
            self._line()  # the final count; work quicker than one interval stays quiet

    def _line(self) -> None:
        now = self.clock()
        self.last = now
        elapsed = now - self.started
        fresh = self.done - self.initial
        rate = fresh / elapsed if elapsed > 0 else 0.0
        if self.total:
            counts = f"{self.done:,}/{self.total:,} {self.unit} ({self.done / self.total:.0%})"
        else:
            counts = f"{self.done:,} {self.unit}"
        parts = [f"{self.desc}: {counts}", f"{rate:,.1f} {self.unit}/s"]
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"about {(self.total - self.done) / rate:,.0f} s left")
        line = ", ".join(parts) + (f"; {self.postfix}" if self.postfix else "")
        print(line, file=self.stream, flush=True)


def track(items: Iterable[T], desc: str, unit: str = "it", total: int | None = None, leave: bool = True) -> Iterator[T]:
    """``items`` one by one, with a :class:`Progress` counting them."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with Progress(total, desc, unit, leave=leave) as bar:
        for item in items:
            yield item
            bar.update()
