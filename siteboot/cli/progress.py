"""Progress on a terminal: the step under way on one line of stderr, redrawn with the time it
has taken so far (and what it waits for now); when it ends, a line that stays says how long it
took (steps of less than a second leave none).

Only where stderr is a terminal (and ``TERM`` is not ``dumb``), never with ``--json``: a pipe
or a log gets the notes alone, as before. Standard library only: stage 0 shows the tool venv
build with it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from siteboot.progress import SILENT, Lines, Reporter, Step

SPINNER = "|/-\\"
# Steps quicker than this leave no line behind: nobody waited for them.
MIN_REPORTED = 1.0


def elapsed(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole} s" if whole < 60 else f"{whole // 60} min {whole % 60:02d} s"


def live_wanted(stream: Any) -> bool:
    """A terminal that can redraw a line: not a pipe, a file or ``TERM=dumb``."""
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


def reporter(as_json: bool, stream: Any = None) -> Reporter:
    """What a command shows while it works: nothing with ``--json``; live steps and notes on a
    terminal; else the notes alone, as lines on stderr."""
    stream = sys.stderr if stream is None else stream
    if as_json:
        return SILENT
    if live_wanted(stream):
        return TerminalProgress(stream)
    from siteboot.cli.output import echo

    return Lines(lambda text: echo(text, err=True))


def _terminal_columns() -> int:
    import shutil  # not at the top: stage 0 imports this module before it builds anything

    return shutil.get_terminal_size().columns


class _LiveStep(Step):
    def __init__(self, owner: TerminalProgress, what: str) -> None:
        self.owner = owner
        self.title = what  # what the line that stays says
        self.what = what  # what the live line says now
        self.started = owner.clock()

    def update(self, what: str) -> None:
        with self.owner.lock:
            self.what = what
            self.owner.draw()


class TerminalProgress(Reporter):
    """Draws the innermost step under way as ``| what  12 s`` and redraws it every ``interval``
    seconds from a thread of its own while the step runs."""

    def __init__(self, stream: Any, prefix: str = "", clock: Callable[[], float] = time.monotonic,
                 interval: float = 0.5, columns: Callable[[], int] | None = None) -> None:
        self.stream = stream
        self.prefix = prefix
        self.clock = clock
        self.interval = interval
        self.columns = columns or _terminal_columns
        self.lock = threading.RLock()
        self.steps: list[_LiveStep] = []
        self.frame = 0
        self.drawn = False

    def note(self, text: str) -> None:
        with self.lock:
            self._clear()
            self.stream.write(f"{self.prefix}{text}\n")
            self.draw()

    @contextmanager
    def step(self, what: str) -> Iterator[Step]:
        step = _LiveStep(self, what)
        with self.lock:
            self.steps.append(step)
            self.draw()
        done = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(done,), daemon=True)
        ticker.start()
        failed = True
        try:
            yield step
            failed = False
        finally:
            done.set()
            ticker.join()
            self._finish(step, failed)

    def _finish(self, step: _LiveStep, failed: bool) -> None:
        with self.lock:
            self.steps.remove(step)
            self._clear()
            took = self.clock() - step.started
            if failed:
                self.stream.write(f"{self.prefix}{step.title}: failed after {elapsed(took)}\n")
            elif took >= MIN_REPORTED:
                self.stream.write(f"{self.prefix}{step.title} ({elapsed(took)})\n")
            self.draw()  # an outer step goes on

    def _tick(self, done: threading.Event) -> None:
        while not done.wait(self.interval):
            self.refresh()

    def refresh(self) -> None:
        """The next frame: the spinner turns, the time moves on."""
        with self.lock:
            self.frame += 1
            self.draw()

    def draw(self) -> None:
        """Redraw the live line (the caller holds the lock)."""
        if not self.steps:
            self.stream.flush()
            return
        step = self.steps[-1]
        head = f"{SPINNER[self.frame % len(SPINNER)]} {self.prefix}"
        tail = f"  {elapsed(self.clock() - step.started)}"
        room = max(self.columns() - 1 - len(head) - len(tail), 10)  # a wrapped line stays
        what = step.what if len(step.what) <= room else step.what[:room - 3] + "..."
        self.stream.write(f"\r{head}{what}{tail}\x1b[K")
        self.stream.flush()
        self.drawn = True

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.drawn = False
