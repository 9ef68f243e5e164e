"""`siteboot status` is parsed without click; it must read its options exactly as click does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from siteboot.cli.commands import status
from siteboot.cli.fast import parse_status_args

CASES = [
    [],
    ["--json"],
    ["-i", "alpha"],
    ["--instance", "alpha", "--json"],
    ["--instance=alpha"],
    ["--site", "jaws", "--env", "prod"],
    ["-s", "jaws", "-e", "staging", "--root", "/tmp/x"],
    ["--site=/tmp/a b.toml", "--env=dev", "--root=/srv/sites", "-i", "beta", "--json"],
    ["--json", "--json"],
    ["-i", "a", "-i", "b"],
    ["extra"],
    ["web", "-i", "alpha", "worker_01"],
    ["--all-envs", "beta:*", "--json"],
    ["--all-envs", "--all-envs"],
]


@pytest.mark.parametrize("args", CASES)
@pytest.mark.parametrize("environ", [{}, {"SITEBOOT_SITE": "jaws", "SITEBOOT_ENV": "prod",
                                          "SITEBOOT_ROOT": "/srv"}])
def test_fast_parser_reads_what_click_reads(args, environ, monkeypatch):
    for name in ("SITEBOOT_SITE", "SITEBOOT_ENV", "SITEBOOT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    fast = parse_status_args(["status", *args])
    ctx = status.make_context("status", list(args))
    assert fast == ctx.params


@pytest.mark.parametrize("args", [
    ["status", "--help"], ["status", "-h"], ["status", "--bogus"], ["status", "-i"],
    ["status", "--", "web"], ["status", "-ij"], ["status", "--instance", "--json"], ["ports"], [],
])
def test_anything_else_is_left_to_click(args):
    assert parse_status_args(args) is None


@pytest.mark.parametrize("args", [[], ["web", "-i", "a", "-i", "b", "--all-envs", "--json"]])
def test_status_does_not_import_click_or_jinja2(tmp_path, args):
    code = (f"import sys\nsys.argv = ['siteboot', 'status', '--site', 'nope', *{args!r}]\n"
            "from siteboot.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            "heavy = [m for m in ('click', 'jinja2', 'virtualenv', 'psutil', 'supervisor') "
            "if m in sys.modules]\nprint(code, heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, cwd=tmp_path)
    assert result.stdout.strip() == "3 []", result.stdout + result.stderr
    assert "no site named 'nope'" in result.stderr
