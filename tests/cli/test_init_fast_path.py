"""`siteboot init` is parsed without click, like `status`; it must read its options exactly as
click does, and leave everything else to click."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from siteboot.cli.commands import init
from siteboot.cli.fast import parse_init_args

CASES = [
    [],
    ["--json"],
    ["--no-start"],
    ["--no-start", "--json", "--no-start"],
    ["--site", "jaws", "--env", "prod"],
    ["-s", "jaws", "-e", "staging", "--root", "/tmp/x"],
    ["--site=/tmp/a b.toml", "--env=dev", "--root=/srv/sites"],
    ["--timeout", "5"],
    ["--timeout=2.5", "--wheelhouse", "/tmp/wheels"],
    ["--wheelhouse=/tmp/wheels", "--timeout", "1e2", "--json"],
]


@pytest.mark.parametrize("args", CASES)
@pytest.mark.parametrize("environ", [{}, {"SITEBOOT_SITE": "jaws", "SITEBOOT_ENV": "prod",
                                          "SITEBOOT_ROOT": "/srv",
                                          "SITEBOOT_WHEELHOUSE": "/srv/wheels"},
                                     {"SITEBOOT_WHEELHOUSE": ""}])
def test_fast_parser_reads_what_click_reads(args, environ, monkeypatch):
    for name in ("SITEBOOT_SITE", "SITEBOOT_ENV", "SITEBOOT_ROOT", "SITEBOOT_WHEELHOUSE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    fast = parse_init_args(["init", *args])
    ctx = init.make_context("init", list(args))
    assert fast == ctx.params


@pytest.mark.parametrize("args", [
    ["init", "--help"], ["init", "-h"], ["init", "--bogus"], ["init", "--timeout", "x"],
    ["init", "--timeout"], ["init", "extra"], ["init", "-i", "alpha"], ["init", "--", "x"],
    ["status"], ["up"], [],
])
def test_anything_else_is_left_to_click(args):
    assert parse_init_args(args) is None


def test_a_file_as_wheelhouse_is_left_to_click(tmp_path):
    (tmp_path / "file").write_text("")
    assert parse_init_args(["init", "--wheelhouse", str(tmp_path / "file")]) is None


def test_init_does_not_import_click(tmp_path):
    code = ("import sys\nsys.argv = ['siteboot', 'init', '--site', 'nope']\n"
            "from siteboot.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print(code, 'click' in sys.modules, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, cwd=tmp_path)
    assert result.stderr.strip().splitlines()[-1] == "2 False", result.stderr
    assert "no site named 'nope'" in result.stderr


def test_a_bad_option_is_clicks_to_report(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "siteboot", "init", "--bogus"],
                            capture_output=True, text=True, check=False, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "SITEBOOT_BOOTSTRAPPED": "1"})
    assert result.returncode == 2
    assert "No such option" in result.stderr
    assert "--bogus" in result.stderr
