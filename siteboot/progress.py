"""What long steps tell the operator while they run: the core reports, the command line renders.

A long step (building a venv, pip, waiting for programs to settle) runs inside
``with reporter.step("what") as step:`` and may say what it waits for now with
``step.update("what now")``; ``reporter.note(text)`` is a line that stays. ``Reporter`` itself
shows nothing: the core's default, and what ``--json`` gets. ``Lines`` shows the notes only (stderr
is not a terminal: nothing extra in a log or a pipe); on a terminal the CLI shows each step live
with the time it has taken (``siteboot.cli.progress``).

Standard library only: stage 0 reports the tool venv build through it, before any dependency exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable


class Step:
    """A step under way; ``update`` says what it is doing (or waiting for) now."""

    def update(self, what: str) -> None:
        """Shown nowhere by default."""


class Reporter:
    """Says nothing: the core's default, and what ``--json`` gets."""

    def note(self, text: str) -> None:
        """A line that stays; shown nowhere by default."""

    @contextmanager
    def step(self, what: str) -> Iterator[Step]:
        """A long step, from entering the block to leaving it."""
        yield Step()


class Lines(Reporter):
    """The notes, each a line through ``write``; steps are not shown."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def note(self, text: str) -> None:
        self.write(text)


SILENT = Reporter()
