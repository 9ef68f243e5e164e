"""`check` refuses dependency cycles; `status` of a site with probes stays as light as ever."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.helpers import invoke_cli

CYCLE = """
[site]
name = "t"
envs = ["dev"]

[instances.main]
port = { dev = 40001 }

[programs.rest]
instance = "main"
command = "rest"
depends_on = ["auth"]

[programs.auth]
instance = "main"
command = "auth"
depends_on = ["db"]

[programs.db]
instance = "main"
command = "db"
depends_on = ["rest"]
"""


def test_check_names_the_cycle_with_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "t.toml"
    path.write_text(CYCLE)
    result = invoke_cli("check", "--site", path)
    assert result.exit_code == 2
    line = CYCLE.splitlines().index('depends_on = ["auth"]') + 1
    assert (f"{path}:{line}: [programs.rest] depends_on: dependency cycle: rest -> auth -> db -> "
            "rest") in result.stdout + result.stderr
    report = json.loads(invoke_cli("check", "--site", path, "--json").stdout)
    assert any("dependency cycle" in e for e in report["errors"])


def test_status_reads_health_without_probing_or_heavy_imports(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SITEBOOT_SITE", raising=False)
    site = tmp_path / "t.toml"
    site.write_text(textwrap.dedent(f"""
        [site]
        name = "t"
        envs = ["dev"]
        runtime_dir = "{tmp_path}/run"
        state_dir = "{tmp_path}/state"

        [instances.main]
        port = {{ dev = 40001 }}

        [programs.web]
        instance = "main"
        command = "web"
        port = {{ dev = 41001 }}
        ready = {{ command = "check {{port}}" }}
        restart = {{ backoff_max = 10 }}

        [programs.app]
        instance = "main"
        command = "app"
        depends_on = ["web"]
        """))
    code = textwrap.dedent(f"""
        import sys, time
        sys.argv = ["siteboot", "status", "--site", {str(site)!r}]
        from siteboot.cli import main
        try:
            main()
        except SystemExit as exc:
            print("exit", exc.code)
        from siteboot import control, health
        from siteboot.plan import make_plan
        from siteboot.site import load_site
        from pathlib import Path
        inst = make_plan(load_site(Path({str(site)!r})), "dev").instances["main"]
        inst.state_dir.mkdir(parents=True)
        health.write(inst.health_path, {{"web": {{"pid": 7, "health": "not ready", "detail": "x",
                                                 "checked_at": time.time(), "attempts": 2}}}},
                     time.time())
        rows = control._programs(inst, [dict(name="web", group="t-dev", statename="RUNNING",
                                             pid=7, now=10, start=1, exitstatus=0, spawnerr="")])
        control._add_health(inst, rows)
        print("web", rows[0].health_state, rows[0].health.attempts, rows[0].severity)
        heavy = ("click", "jinja2", "virtualenv", "psutil", "supervisor", "subprocess",
                 "http.client", "urllib.request", "siteboot.readiness", "siteboot.healer",
                 "siteboot.instances", "siteboot.render")
        print(sorted(m for m in heavy if m in sys.modules))
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert lines[-3:] == ["exit 2", "web not ready 2 1", "[]"], result.stdout + result.stderr


def test_the_table_has_health_and_backoff_columns_where_a_healer_watches(capsys, monkeypatch):
    from siteboot.cli.output import print_status
    from siteboot.health import Health
    from siteboot.statusreport import RUNNING, InstanceStatus, ProgramStatus, StatusResult

    monkeypatch.setenv("NO_COLOR", "1")
    rows = [ProgramStatus("web", "t-dev", "RUNNING", 12, 30, None, "", True,
                          health=Health("not ready", "HTTP 500 (want 200)")),
            ProgramStatus("jtm", "t-dev", "FATAL", None, None, 1, "Exited too quickly", True,
                          health=Health("not ready", "", attempts=3, next_try_s=4)),
            ProgramStatus("db", "t-dev", "RUNNING", 13, 30, None, "", True,
                          health=Health("ready", "", attempts=1)),
            ProgramStatus("siteboot-healer", "siteboot-healer", "RUNNING", 11, 31, None, "", True)]
    print_status(StatusResult("t", "dev", [InstanceStatus("a", "me", RUNNING, "unix:///a", pid=7,
                                                          programs=rows)]))
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["program", "state", "health", "backoff", "pid"]
    assert lines[3].split() == ["web", "RUNNING", "not", "ready", "12", "uptime", "30s;", "not",
                                "ready:", "HTTP", "500", "(want", "200)"]
    assert lines[4].split()[:8] == ["jtm", "FATAL", "not", "ready", "3", "tries,", "next", "in"]
    assert lines[5].split()[:6] == ["db", "RUNNING", "ready", "1", "try", "13"]
    assert lines[6].split()[:4] == ["siteboot-healer", "RUNNING", "ready", "11"]
