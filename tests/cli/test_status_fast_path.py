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


def heavy_imports(cwd: Path, args: list[str], heavy: tuple[str, ...],
                  env: dict[str, str] | None = None, prelude: str = "") -> tuple[str, str]:
    """``siteboot status ARGS`` in a fresh interpreter (after ``prelude``): (its exit code and
    which of ``heavy`` it imported, its stderr)."""
    code = (f"import sys\n{prelude}sys.argv = ['siteboot', 'status', *{args!r}]\n"
            "from siteboot.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            f"heavy = [m for m in {heavy!r} if m in sys.modules]\n"
            "print(code, heavy, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, cwd=cwd, env=env)
    verdict = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    return verdict, result.stdout + result.stderr


@pytest.mark.parametrize("args", [[], ["web", "-i", "a", "-i", "b", "--all-envs", "--json"]])
def test_status_does_not_import_click_or_jinja2(tmp_path, args):
    verdict, output = heavy_imports(tmp_path, ["--site", "nope", *args],
                                    ("click", "jinja2", "virtualenv", "psutil", "supervisor"))
    assert verdict == "3 []", output
    assert "no site named 'nope'" in output


def one_instance_site(folder: Path, name: str, port: str) -> Path:
    site = folder / f"{name}.toml"
    site.write_text(f"""
[site]
envs = ["dev"]
runtime_dir = "{folder}/rt"
state_dir = "{folder}/st"

[instances.main]
port = {port}
""")
    return site


def test_status_of_a_site_with_auto_ports_stays_light(tmp_path):
    """Reading the port record is all `status` does for auto ports: no allocation, no psutil."""
    site = one_instance_site(tmp_path, "auto", '"auto"')
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
    site = one_instance_site(tmp_path, "cached", "{ dev = 23457 }")
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    prelude = ("import siteboot.plan_cache\n"  # the site file was written a moment ago
               "siteboot.plan_cache.SETTLE_NS = 0\n")
    verdicts = []
    for _ in range(2):
        verdict, output = heavy_imports(tmp_path, ["--site", str(site), "--json"],
                                        ("tomllib", "tomli", "tempfile", "xml.parsers.expat"),
                                        env, prelude)
        assert '"state": "not running"' in output, output
        verdicts.append(verdict)
    assert verdicts[0] in ("2 ['tomllib']", "2 ['tomli']")
    assert verdicts[1] == "2 []"
    cached = list((tmp_path / "home" / ".local" / "state" / "siteboot" / "plans").iterdir())
    assert [p.name.split("-")[0] for p in cached] == ["cached"]
