"""The one error translation: messages, exit codes, suggestions."""

from __future__ import annotations

import errno

import pytest

from siteboot.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    STATUS_UNKNOWN,
    SitebootError,
    UsageError,
    describe_os_error,
    did_you_mean,
    exit_code_for,
)


def test_did_you_mean():
    assert did_you_mean("prot", ["port", "env"]) == " (did you mean 'port'?)"
    assert did_you_mean("stie", ["site"], "'[{}]'") == " (did you mean '[site]'?)"
    assert did_you_mean("zzz", ["port"]) == ""


def test_describe_os_error_names_the_file():
    full = OSError(errno.ENOSPC, "No space left on device", "/tmp/x/supervisord.conf")
    assert describe_os_error(full) == "No space left on device: /tmp/x/supervisord.conf"
    assert describe_os_error(PermissionError(errno.EACCES, "Permission denied")) == \
        "PermissionError: Permission denied"


def test_exit_code_for_each_kind_of_failure():
    said: list[str] = []
    assert exit_code_for(UsageError("bad", "try this"), debug=False, error=said.append) == 2
    assert said.pop() == "bad\n  hint: try this"
    assert exit_code_for(KeyboardInterrupt(), debug=False, error=said.append) == EXIT_INTERRUPTED
    assert said == []
    assert exit_code_for(ValueError("boom"), debug=False, error=said.append) == EXIT_FAILED
    assert said.pop().startswith("internal error: ValueError: boom\n  rerun with --debug")
    assert exit_code_for(ValueError("boom"), debug=False, error=said.append,
                         internal_code=STATUS_UNKNOWN) == STATUS_UNKNOWN


def test_exit_code_for_reraises_with_debug_and_for_exits():
    with pytest.raises(SitebootError):
        exit_code_for(SitebootError("x"), debug=True, error=print)
    with pytest.raises(SystemExit):
        exit_code_for(SystemExit(3), debug=False, error=print)


def test_a_closed_pipe_is_quiet(monkeypatch):
    silenced: list[bool] = []
    monkeypatch.setattr("siteboot.errors.silence_output", lambda: silenced.append(True))
    said: list[str] = []
    assert exit_code_for(BrokenPipeError(), debug=False, error=said.append) == 141
    assert (said, silenced) == ([], [True])


def test_an_error_nobody_can_read_is_quiet_too(monkeypatch):
    """`siteboot ... 2>&1 | head -1`: stderr is the closed pipe as well."""
    silenced: list[bool] = []
    monkeypatch.setattr("siteboot.errors.silence_output", lambda: silenced.append(True))

    def closed(text: str) -> None:
        raise BrokenPipeError

    assert exit_code_for(SitebootError("x"), debug=False, error=closed) == 1
    assert exit_code_for(ValueError("bug"), debug=False, error=closed, internal_code=3) == 3
    assert exit_code_for(BrokenPipeError(), debug=False, error=closed, broken_pipe_code=3) == 3
    assert silenced == [True, True, True]


def test_status_keeps_its_verdict_when_the_reader_goes_away(monkeypatch):
    """`siteboot status | head -1`: exit 0-3 as the report says, not an internal error."""
    from siteboot.cli import fast
    from siteboot.statusreport import StatusResult

    def closed(report: object) -> None:
        raise BrokenPipeError

    monkeypatch.setattr("siteboot.ops.status",
                        lambda plan, instance, names: StatusResult("t", "dev", []))
    monkeypatch.setattr("siteboot.cli.output.print_status", closed)
    monkeypatch.setattr(fast, "silence_output", lambda: None)

    class FakeCtx:
        def send_status_requests(self, instances: object) -> None:
            pass

        def quick_status(self, instances: object) -> None:
            return None

        def plan(self) -> None:
            return None

    assert fast.show_status(FakeCtx(), (), as_json=False) == 0  # type: ignore[arg-type]
