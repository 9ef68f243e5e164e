"""`siteboot logs` and `tail` through click: options reach the operation, labels are coloured
only where colour is wanted."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from siteboot.logs import LogStream
from tests.helpers import invoke_cli, own_site_text


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, short_dir: Path) -> Path:
    for name in ("SITEBOOT_SITE", "SITEBOOT_ENV", "SITEBOOT_ROOT", "SITEBOOT_DEBUG", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "t.toml"
    path.write_text(textwrap.dedent(own_site_text(short_dir)))
    return path


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def logs(plan: Any, names: Any, emit: Any, instance: Any = None, follow: bool = False,
             lines: int = 10) -> None:
        seen.append({"names": list(names), "instance": instance, "follow": follow,
                     "lines": lines})
        emit(LogStream("main", "web", "stdout", "web    ", 0), "\x1b[32mok\x1b[0m")
        emit(LogStream("main", "web", "stderr", "web err", 0), "oops")
        emit(LogStream("main", "api", "stdout", "api    ", 1), "up")

    monkeypatch.setattr("siteboot.ops.logs", logs)
    return seen


def test_options_reach_the_operation(site, calls):
    result = invoke_cli("logs", "--site", site, "-f", "-n", "3", "-i", "main", "web", "api")
    assert result.exit_code == 0, result.stderr
    assert calls == [{"names": ["web", "api"], "instance": ("main",), "follow": True,
                      "lines": 3}]
    assert invoke_cli("logs", "--site", site).exit_code == 0
    assert calls[-1] == {"names": [], "instance": (), "follow": False, "lines": 10}
    assert invoke_cli("logs", "--site", site, "-n", "-1").exit_code == 2


def test_plain_where_colour_is_not_wanted(site, calls):
    result = invoke_cli("logs", "--site", site)  # not a terminal
    assert result.stdout == "web     | ok\nweb err | oops\napi     | up\n"


def test_labels_coloured_per_process_on_a_terminal(site, calls, monkeypatch):
    monkeypatch.setattr("siteboot.cli.output.color_wanted", lambda stream: True)
    lines = invoke_cli("logs", "--site", site).stdout.splitlines()
    assert lines == ["\x1b[36mweb     |\x1b[0m \x1b[32mok\x1b[0m",  # the program's own colours too
                     "\x1b[36mweb err |\x1b[0m oops",
                     "\x1b[33mapi     |\x1b[0m up"]


def test_tail_passes_the_instance(site, monkeypatch):
    seen: list[Any] = []
    monkeypatch.setattr("siteboot.ops.tail", lambda plan, name, write, **options: seen.append(
        (name, options["instance"])))
    assert invoke_cli("tail", "--site", site, "-i", "main", "web").exit_code == 0
    assert seen == [("web", ("main",))]
