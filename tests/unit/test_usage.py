"""Stage 0's `--help` (a fresh clone, no click yet) and click's `siteboot --help` say the same:
one command list, one set of summaries (siteboot/usage.py)."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from siteboot import __main__ as stage0
from siteboot import __version__, usage
from siteboot.cli.commands import cli


def sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """``Options:`` and ``Commands:`` of a help text as (name, text) rows; wrapped text joined."""
    found: dict[str, list[tuple[str, str]]] = {}
    rows: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        if re.match(r"^\w+:$", line):
            rows = found.setdefault(line[:-1], [])
        elif rows is not None and re.match(r"^  \S", line):
            name, _, rest = line.strip().partition("  ")
            rows.append((name, rest.strip()))
        elif rows is not None and line.startswith("    ") and rows:
            name, rest = rows[-1]
            rows[-1] = (name, f"{rest} {line.strip()}")
        elif not line.strip():
            rows = None
    return found


def click_help(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], prog_name="siteboot",
                                terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def test_stage0_lists_what_click_lists():
    ours, theirs = sections(usage.stage0_help(None)), sections(click_help())
    assert ours["Commands"] == theirs["Commands"]
    assert ours["Options"] == theirs["Options"]
    assert click_help().splitlines()[2].strip() == usage.SUMMARY


def test_every_command_has_a_summary_that_fits_a_line():
    assert list(usage.COMMANDS) == cli.list_commands(click.Context(cli)), \
        "a command without a summary: add it to siteboot/usage.py COMMANDS"
    assert all(len(text) <= 62 for text in usage.COMMANDS.values())  # no wrapping at 80 columns


def test_stage0_init_options_are_init_s():
    init = cli.get_command(click.Context(cli), "init")
    assert init is not None
    names = {name for param in init.params for name in param.opts}
    listed = [word.rstrip(",") for row in usage.INIT_OPTIONS for word in row.split()
              if word.startswith("-")]
    assert listed
    assert set(listed) <= names


@pytest.mark.parametrize("command", ["init", "logs", "runner"])
def test_stage0_help_of_one_command(command):
    text = usage.stage0_help(command)
    assert text.startswith(f"Usage: siteboot {command} [OPTIONS]\n\n  {usage.COMMANDS[command]}\n")
    assert ("--no-start" in text) == (command == "init")


def test_version_is_click_s():
    result = CliRunner().invoke(cli, ["--version"], prog_name="siteboot")
    assert result.output.strip() == usage.version_line(__version__)
    assert stage0.help_text(["--version"]) == usage.version_line(__version__)
    assert stage0.help_text(["ctl", "--", "--version"]).startswith("Usage: siteboot ctl")
