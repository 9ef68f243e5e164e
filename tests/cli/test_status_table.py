"""The status table: restarts and the last exit beside each program (issue 11, defect 11)."""

from __future__ import annotations

from siteboot.cli.output import print_status
from siteboot.history import History, LastExit
from siteboot.statusreport import RUNNING, InstanceStatus, ProgramStatus, StatusResult


def report(*programs: ProgramStatus) -> StatusResult:
    return StatusResult("t", "dev", [InstanceStatus("alpha", "me", RUNNING, "unix:///a", pid=7,
                                                    programs=list(programs))])


def test_restarts_column_and_last_exit(capsys, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    looping = ProgramStatus("web", "t-dev", "RUNNING", 12, 2, None, "", True,
                            history=History(4, 300, LastExit(8, "exit status 3", False)),
                            restart_limit=3)
    steady = ProgramStatus("worker", "t-dev", "RUNNING", 13, 900, None, "", True,
                           history=History(0, 300, None), restart_limit=3)
    unknown = ProgramStatus("other", "t-dev", "EXITED", None, None, 0, "", False)
    stopped = ProgramStatus("held", "t-dev", "STOPPED", None, None, None, "", False)
    print_status(report(looping, steady, unknown, stopped))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "site t, env dev"
    assert lines[2].split() == ["program", "state", "pid", "restarts"]
    assert lines[3].split()[:4] == ["web", "RUNNING", "12", "4!"]
    assert lines[3].endswith("uptime 2s; crash loop: 4 restarts in 300s (more than 3); "
                             "last exit 8s ago: exit status 3, not expected")
    assert lines[4].split() == ["worker", "RUNNING", "13", "0", "uptime", "900s"]
    assert lines[5].split() == ["other", "EXITED", "exit", "0"]
    assert lines[6].split() == ["held", "STOPPED"]  # an operator's stop: no "exit -1"


def test_no_restarts_column_when_nothing_is_counted(capsys, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    print_status(report(ProgramStatus("web", "t-dev", "RUNNING", 12, 2, None, "", True)))
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["program", "state", "pid"]


def test_a_failing_programs_last_log_lines_are_under_its_row(capsys, monkeypatch):
    from siteboot.statusreport import LogTail

    monkeypatch.setenv("NO_COLOR", "1")
    fatal = ProgramStatus("web", "t-dev", "FATAL", None, None, 2,
                          "Exited too quickly (process log may have details)", True,
                          log_tail=LogTail("stderr", ["Traceback (most recent call last):",
                                                      "ImportError: no module named app"]))
    fine = ProgramStatus("worker", "t-dev", "RUNNING", 13, 9, None, "", True)
    print_status(report(fatal, fine))
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].split()[:2] == ["web", "FATAL"]
    assert lines[4:6] == ["    stderr | Traceback (most recent call last):",
                          "    stderr | ImportError: no module named app"]
    assert lines[6].split()[:2] == ["worker", "RUNNING"]
