"""Progress while long steps run (issue 9): the core reports steps, the CLI draws them live on a
terminal only (never in a pipe, a log or with --json)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from siteboot import __main__ as stage0
from siteboot import control
from siteboot.cli.progress import TerminalProgress, elapsed, live_wanted, reporter
from siteboot.progress import SILENT, Lines, Reporter
from tests.helpers import RecordingReporter
from tests.unit.bootstrap_fakes import FakeRunner, make, make_checkout


class Terminal(io.StringIO):
    """What a terminal receives (a fake tty)."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def screen() -> tuple[Terminal, Clock, TerminalProgress]:
    stream, clock = Terminal(), Clock()
    # a ticker that never ticks by itself: frames are drawn by refresh() below
    return stream, clock, TerminalProgress(stream, clock=clock, interval=3600, columns=lambda: 80)


def frames(text: str) -> list[str]:
    """What was drawn, one entry per redraw or printed line."""
    return [part for part in text.replace("\x1b[K", "").replace("\n", "\n\r").split("\r") if part]


def test_a_step_drawn_live_then_a_line_with_its_time(screen):
    stream, clock, progress = screen
    with progress.step("venv app: pip install flask") as step:
        clock.now += 5
        progress.refresh()
        step.update("venv app: pip install flask (still)")
        clock.now += 70
        progress.refresh()
    assert frames(stream.getvalue()) == [
        "| venv app: pip install flask  0 s",
        "/ venv app: pip install flask  5 s",
        "/ venv app: pip install flask (still)  5 s",
        "- venv app: pip install flask (still)  1 min 15 s",
        "venv app: pip install flask (1 min 15 s)\n",
    ]


def test_a_quick_step_leaves_no_line_a_failed_one_does(screen):
    stream, clock, progress = screen
    with progress.step("quick"):
        clock.now += 0.5
    assert stream.getvalue().endswith("\r\x1b[K")  # drawn, then taken away
    stream.truncate(0)
    stream.seek(0)
    with pytest.raises(KeyboardInterrupt), progress.step("pip install"):
        raise KeyboardInterrupt
    assert frames(stream.getvalue())[-1] == "pip install: failed after 0 s\n"


def test_notes_do_not_cut_through_the_live_line(screen):
    stream, _clock, progress = screen
    with progress.step("building"):
        progress.note("installing click with pip")
    assert frames(stream.getvalue()) == ["| building  0 s", "installing click with pip\n",
                                         "| building  0 s"]


def test_a_long_step_is_cut_to_the_terminal_keeping_its_time(screen):
    stream, _clock, progress = screen
    progress.columns = lambda: 40
    with progress.step("pip install " + "x" * 100):
        pass
    drawn = frames(stream.getvalue())[0]
    assert drawn == "| pip install " + "x" * 17 + "...  0 s"
    assert len(drawn) == 39


def test_stage0_prefix():
    stream, clock = Terminal(), Clock()
    progress = TerminalProgress(stream, prefix="siteboot: ", clock=clock, interval=3600)
    progress.note("creating tool venv")
    with progress.step("tool venv: pip install click"):
        clock.now += 3
    assert frames(stream.getvalue())[-1] == "siteboot: tool venv: pip install click (3 s)\n"
    assert frames(stream.getvalue())[0] == "siteboot: creating tool venv\n"


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (59.9, "59 s"), (61, "1 min 01 s"),
                                               (3600, "60 min 00 s")])
def test_elapsed(seconds, text):
    assert elapsed(seconds) == text


def test_live_only_on_a_terminal_and_never_with_json(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    assert isinstance(reporter(False, Terminal()), TerminalProgress)
    assert reporter(True, Terminal()) is SILENT
    piped = reporter(False, io.StringIO())
    assert type(piped) is Lines  # the notes, as before; no steps
    monkeypatch.setenv("TERM", "dumb")
    assert not live_wanted(Terminal())
    assert type(reporter(False, Terminal())) is Lines


def test_stage0_draws_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    monkeypatch.setattr("sys.stderr", Terminal())
    assert isinstance(stage0._terminal_progress(["init"]), TerminalProgress)
    assert stage0._terminal_progress(["init", "--json"]) is None
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert stage0._terminal_progress(["init"]) is None


def test_the_default_reporter_says_nothing():
    with Reporter().step("x") as step:
        step.update("y")
    Reporter().note("z")


# --------------------------------------------------------------------------------------------
# what the core reports


def test_the_tool_venv_build_reports_its_steps(tmp_path: Path):
    builder = make(make_checkout(tmp_path), FakeRunner())
    builder.progress = recorded = RecordingReporter()
    builder.ensure()
    assert recorded.steps() == ["tool venv: creating a virtualenv",
                                "tool venv: installing pip (ensurepip)",
                                "tool venv: pip install supervisor, click",
                                "tool venv: compiling siteboot"]
    assert [kind for kind, _ in recorded.events] == ["step", "end"] * 4


def test_settling_reports_what_it_waits_for(monkeypatch):
    reports = iter([("STARTING", 1), ("STARTING", 1), ("RUNNING", 0)])

    class Program:
        def __init__(self, state: str) -> None:
            self.name, self.state = "web", state

    class Report:
        def __init__(self, state: str, code: int) -> None:
            self.exit_code = code
            self.instances = [type("Inst", (), {"programs": [Program(state)]})()]

    monkeypatch.setattr(control, "status", lambda plan: Report(*next(reports)))
    recorded = RecordingReporter()
    result = control.settle(None, 30, clock=lambda: 0.0, sleep=lambda s: None,  # type: ignore[arg-type]
                            progress=recorded)
    assert result.exit_code == 0
    assert recorded.events == [
        ("step", "waiting for programs to settle"),
        ("update", "waiting for programs to settle (web STARTING)"),
        ("update", "waiting for programs to settle (web STARTING)"),
        ("end", "waiting for programs to settle")]


def test_nothing_to_wait_for_is_no_step(monkeypatch):
    monkeypatch.setattr(control, "status", lambda plan: type("R", (), {"exit_code": 0})())
    recorded = RecordingReporter()
    control.settle(None, 30, progress=recorded)  # type: ignore[arg-type]
    assert recorded.events == []
