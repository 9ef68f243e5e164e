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
    ["status", "extra"], ["status", "-ij"], ["status", "--instance", "--json"], ["ports"], [],
])
def test_anything_else_is_left_to_click(args):
    assert parse_status_args(args) is None


def test_status_does_not_import_click_or_jinja2(tmp_path):
    code = ("import sys\nsys.argv = ['siteboot', 'status', '--site', 'nope']\n"
            "from siteboot.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            "heavy = [m for m in ('click', 'jinja2', 'virtualenv', 'psutil', 'supervisor') "
            "if m in sys.modules]\nprint(code, heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, cwd=tmp_path)
    assert result.stdout.strip() == "3 []", result.stdout + result.stderr
    assert "no site named 'nope'" in result.stderr


def test_status_of_a_site_with_auto_ports_stays_light(tmp_path):
    """Reading the port record is all `status` does for auto ports: no allocation, no psutil."""
    site = tmp_path / "auto.toml"
    site.write_text(f"""
[site]
envs = ["dev"]
runtime_dir = "{tmp_path}/rt"
state_dir = "{tmp_path}/st"

[instances.main]
port = "auto"
""")
    (tmp_path / "st").mkdir(mode=0o700)
    record = tmp_path / "st" / "ports-auto-dev.json"
    record.write_text('{"ports": {"supervisord-main": 23456}}')
    record.chmod(0o600)
    code = ("import sys\n"
            f"sys.argv = ['siteboot', 'status', '--site', {str(site)!r}, '--json']\n"
            "from siteboot.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            "heavy = [m for m in ('click', 'jinja2', 'virtualenv', 'psutil', 'supervisor', "
            "'subprocess', 'tempfile', 'difflib') if m in sys.modules]\n"
            "print(code, heavy, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, cwd=tmp_path)
    assert result.stderr.strip().endswith("2 []"), result.stdout + result.stderr
    assert '"state": "not running"' in result.stdout
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["ports-auto-dev.json"]
