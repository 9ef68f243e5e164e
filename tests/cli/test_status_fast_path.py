"""`siteboot status` is parsed without click; it must read its options exactly as click does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def heavy_imports(cwd: Path, args: list[str], heavy: tuple[str, ...]) -> tuple[str, str]:
    """``siteboot status ARGS`` in a fresh interpreter: (its exit code and which of ``heavy``
    it imported, its stderr)."""
    code = (f"import sys\nsys.argv = ['siteboot', 'status', *{args!r}]\n"
            "from siteboot.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            f"heavy = [m for m in {heavy!r} if m in sys.modules]\n"
            "print(code, heavy, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, cwd=cwd)
    verdict = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    return verdict, result.stdout + result.stderr


@pytest.mark.parametrize("args", [[], ["web", "-i", "a", "-i", "b", "--all-envs", "--json"]])
def test_status_does_not_import_click_or_jinja2(tmp_path, args):
    verdict, output = heavy_imports(tmp_path, ["--site", "nope", *args],
                                    ("click", "jinja2", "virtualenv", "psutil", "supervisor"))
    assert verdict == "3 []", output
    assert "no site named 'nope'" in output


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
    verdict, output = heavy_imports(tmp_path, ["--site", str(site), "--json"], (
        "click", "jinja2", "virtualenv", "psutil", "supervisor", "subprocess", "tempfile",
        "difflib"))
    assert verdict == "2 []", output
    assert '"state": "not running"' in output
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["ports-auto-dev.json"]


def test_status_from_the_plan_cache_parses_nothing(tmp_path):
    """Once the plan is cached, `status` neither imports a TOML parser nor validates the site:
    it asks the supervisords (here: none answers) with what the cache holds."""
    site = tmp_path / "cached.toml"
    site.write_text(f"""
[site]
envs = ["dev"]
runtime_dir = "{tmp_path}/rt"
state_dir = "{tmp_path}/st"

[instances.main]
port = {{ dev = 23457 }}
""")
    code = ("import sys\nimport siteboot.plan_cache\n"
            "siteboot.plan_cache._SETTLE_NS = 0  # the site file was written a moment ago\n"
            f"sys.argv = ['siteboot', 'status', '--site', {str(site)!r}, '--json']\n"
            "from siteboot.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            "heavy = [m for m in ('tomllib', 'tomli', 'tempfile', 'xml.parsers.expat') "
            "if m in sys.modules]\n"
            "print(code, heavy, file=sys.stderr)\n")
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    verdicts = []
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=False, cwd=tmp_path, env=env)
        assert '"state": "not running"' in result.stdout, result.stdout + result.stderr
        verdicts.append(result.stderr.strip().splitlines()[-1])
    assert verdicts[0].startswith("2 ['tomllib'") or verdicts[0].startswith("2 ['tomli'")
    assert verdicts[1] == "2 []"
    cached = list((tmp_path / "home" / ".local" / "state" / "siteboot" / "plans").iterdir())
    assert [p.name.split("-")[0] for p in cached] == ["cached"]
