"""Ports and failures as an operator meets them (issue 9), against real supervisords: auto ports,
ports taken before a start, a failing program's own words, what a site edit changed."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import urllib.request
from typing import Any

import pytest

from tests.helpers import SITEBOOT, squatter, supervisords

pytestmark = pytest.mark.slow

AUTO_PROGRAMS = """
[programs.web]
instance = "alpha"
command = "{python} -m siteboot.demo serve --port {port}"
port = "auto"
startsecs = 1

[programs.worker]
instance = "beta"
command = "{python} -m siteboot.demo work --interval 0.5"
startsecs = 1
stopwaitsecs = 5
"""


def ports_of(site: Any) -> dict[str, int]:
    data = json.loads(site.run("ports", "--json", check=True).stdout)
    assert set(data["auto"]) == set(data["ports"])
    return {name: by_env["dev"] for name, by_env in data["ports"].items()}


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as answer:
        data: dict[str, Any] = json.loads(answer.read())
        return data


def test_auto_ports_are_chosen_once_kept_across_restarts_and_used(site_factory):
    site = site_factory(AUTO_PROGRAMS, auto_ports=True)
    first = site.run("init", check=True)
    ports = ports_of(site)
    assert set(ports) == {"web", "supervisord-alpha", "supervisord-beta"}
    assert len(set(ports.values())) == 3
    assert all(20000 <= port < 32768 for port in ports.values())
    for name, port in ports.items():
        key = name if name.startswith("supervisord-") else f"program {name}"
        assert f"  auto port of {key}: {port}\n" in first.stdout
    assert health(ports["web"])["path"] == "/health"  # the program got its port as {port}
    conf = (site.runtime("alpha") / "supervisord-alpha.conf").read_text()
    assert f"port = 127.0.0.1:{ports['supervisord-alpha']}" in conf
    record = site.state() / "ports-it-dev.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert json.loads(record.read_text())["ports"]["program web"] == ports["web"]

    again = site.run("up", check=True)
    assert again.stdout.count("already running: nothing to do") == 2
    assert "auto port" not in again.stdout
    site.run("down", check=True)
    site.run("up", check=True)  # stable across restarts
    assert ports_of(site) == ports
    site.wait_status(0)
    assert health(ports["web"])["service"] == "demo"


def test_an_auto_port_squatted_by_another_account_moves_and_says_so(site_factory):
    site = site_factory(AUTO_PROGRAMS, auto_ports=True)
    site.run("up", check=True)
    ports = ports_of(site)
    site.run("down", check=True)
    with squatter(ports["web"]) as squat:
        result = site.run("up", check=True)
        line = next(line for line in result.stdout.splitlines() if "auto port of program web" in line)
        assert line.startswith(f"  auto port of program web: {ports['web']} is held by pid "
                               f"{squat.pid} (/usr/bin/python3 -c import socket, sys")
        moved = ports_of(site)["web"]
        assert line.endswith(f", user nobody): moved to {moved}")
        assert site.wait_status(0)["ok"] is True
        assert health(moved)["path"] == "/health"
        assert ports_of(site)["supervisord-alpha"] == ports["supervisord-alpha"]


def test_a_taken_fixed_port_refuses_at_once_naming_its_holder(site_factory):
    site = site_factory()
    web = site.ports["web"]
    with squatter(web) as squat:
        result = site.run("init")
        assert result.returncode == 2, result.stdout + result.stderr  # alpha is not running
        assert ("alpha: failed: nothing started, a port it needs is taken:\n"
                f"    port {web} (program web) is held by pid {squat.pid} (/usr/bin/python3 -c "
                "import socket, sys s = socket.socket()") in result.stdout
        assert "user nobody)\n  hint: stop that process, or change the port" in result.stdout
        assert "beta: started" in result.stdout
        assert len(supervisords(site.base)) == 1  # beta's: alpha was never started
    site.run("up", check=True)
    site.wait_status(0)

    # a running instance: a program the edit adds, on a taken port, is refused before anything
    # of the edit is applied
    spare = site.ports["spare"]
    site.path.write_text(site.path.read_text() + f"""
[programs.api]
instance = "alpha"
command = "{{python}} -m siteboot.demo serve --port {{port}}"
port = {{ dev = {spare} }}
startsecs = 1
""")
    with squatter(spare) as squat:
        result = site.run("up")
        assert result.returncode == 1
        assert (f"alpha: failed: nothing started, a port it needs is taken:\n    port {spare} "
                f"(program api) is held by pid {squat.pid} (") in result.stdout
        _, data = site.status()  # nothing of the edit was applied
        assert {p["name"]: p["state"] for p in data["instances"][0]["programs"]} == \
            {"web": "RUNNING", "api": "NOT LOADED"}
    result = site.run("up", check=True)
    assert "alpha: updated: program api: added" in result.stdout
    site.wait_status(0)


BROKEN = """
[programs.web]
instance = "alpha"
command = "{python} -m siteboot.demo serve --port {port}"
port = { dev = PORT_WEB }
startsecs = 1

[programs.broken]
instance = "alpha"
command = "{python} /nonexistent/p9/app.py"
startsecs = 1
startretries = 1

[programs.worker]
instance = "beta"
command = "{python} -m siteboot.demo work --interval 0.5"
startsecs = 1
"""


def test_a_failing_program_says_why_in_init_status_up_and_start(site_factory):
    site = site_factory(BROKEN)
    error = "can't open file '/nonexistent/p9/app.py'"

    init = site.run("init")
    assert init.returncode == 2, init.stdout + init.stderr
    lines = init.stdout.splitlines()
    row = next(n for n, line in enumerate(lines) if line.split()[:2] == ["broken", "FATAL"])
    assert lines[row + 1].startswith("    stderr | ")
    assert error in lines[row + 1]

    status = site.run("status")
    assert status.returncode == 2
    assert "    stderr | " in status.stdout
    assert error in status.stdout
    _, data = site.status()
    broken = next(p for p in data["instances"][0]["programs"] if p["name"] == "broken")
    assert broken["log_tail"]["stream"] == "stderr"
    assert error in broken["log_tail"]["lines"][-1]
    web = next(p for p in data["instances"][0]["programs"] if p["name"] == "web")
    assert web["log_tail"] is None

    up = site.run("up")  # a FATAL program on a running instance: up says so, exit 1
    assert up.returncode == 1
    assert "alpha: failed: programs that should run do not: broken: FATAL" in up.stdout
    assert "  broken stderr | " in up.stdout
    assert error in up.stdout
    assert "beta: already running: nothing to do" in up.stdout

    start = site.run("start", "broken")
    assert start.returncode == 1
    assert "alpha:broken: FATAL" in start.stdout
    assert "\n  stderr | " in start.stdout
    assert error in start.stdout


def test_up_names_what_changed_per_program(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    text = site.path.read_text()
    worker = text[text.index("[programs.worker]"):]
    edited = text.replace(worker, "").replace(
        "startsecs = 1\n", 'startsecs = 2\nenvironment = { GREETING = "s3cret" }\n', 1)
    edited += f"""
[programs.api]
instance = "alpha"
command = "{{python}} -m siteboot.demo serve --port {{port}}"
port = {{ dev = {site.ports["spare"]} }}
startsecs = 1
"""
    site.path.write_text(edited)
    result = site.run("up", check=True)
    assert ("alpha: updated: program api: added; program web: environment, startsecs changed; "
            "reloaded it-dev (its programs restarted)") in result.stdout
    assert "beta: updated: program worker: removed; removed it-dev" in result.stdout
    assert "s3cret" not in result.stdout
    again = site.run("up", check=True)  # said once: what runs now is what the site says
    assert again.stdout.count("already running: nothing to do") == 2
    site.wait_status(0)


def test_two_inits_at_once_agree_on_the_ports(site_factory):
    site = site_factory(AUTO_PROGRAMS, auto_ports=True)
    runs = [subprocess.Popen([*SITEBOOT, "init"], env=site.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, out + err
    chosen = [line for out, _ in outputs for line in out.splitlines() if "auto port of" in line]
    assert len(chosen) == 3  # each port allocated once, by one of them
    ports = ports_of(site)
    assert all(f": {ports[name]}" in " ".join(chosen) for name in ports)
    assert len(supervisords(site.base)) == 2
    assert health(ports["web"])["path"] == "/health"


def test_a_wiped_state_dir_and_a_planted_port_record(site_factory):
    site = site_factory(AUTO_PROGRAMS, auto_ports=True)
    site.run("up", check=True)
    site.wait_status(0)
    ports = ports_of(site)
    shutil.rmtree(site.state())  # keys and port record gone while everything runs

    rc, data = site.status()
    assert rc == 3
    assert [i["state"] for i in data["instances"]] == ["no key", "no key"]  # not "orphaned"
    up = site.run("up")
    assert up.returncode == 1
    assert "its key" in up.stdout
    assert "is missing: siteboot makes no new key for a running instance" in up.stdout
    assert f"auto port of supervisord-alpha: {ports['supervisord-alpha']}, where it runs " \
           "(its port record was lost)" in up.stdout
    assert ports_of(site) == ports  # found again where they run
    site.run("down", check=True)
    site.run("up", check=True)
    site.wait_status(0)
    assert ports_of(site) == ports

    record = site.state() / "ports-it-dev.json"
    record.chmod(0o644)
    for args in (["up"], ["status"], ["ports"]):
        result = site.run(*args)
        assert result.returncode == (3 if args == ["status"] else 1)
        assert f"refusing port record {record}: it must be a regular file of" in result.stderr
        assert ", mode 644)" in result.stderr
    record.chmod(0o600)
    site.wait_status(0)


def test_a_port_taken_while_its_program_was_stopped_is_named_by_start_and_status(site_factory):
    site = site_factory(BROKEN[:BROKEN.index("[programs.broken]")].replace(
        "startsecs = 1\n", "startsecs = 1\nstartretries = 0\n"))
    site.run("up", check=True)
    site.run("stop", "web", check=True)
    with squatter(site.ports["web"]) as squat:
        start = site.run("start", "web")
        assert start.returncode == 1
        assert "alpha:web: FATAL" in start.stdout
        assert "  stderr | OSError: [Errno 98] Address already in use" in start.stdout
        _, data = site.status()
        web = next(p for p in data["instances"][0]["programs"] if p["name"] == "web")
        assert web["state"] == "FATAL"
        assert f"port {site.ports['web']} is held by pid {squat.pid} (" in web["spawnerr"]
        assert "user nobody), not by this site" in web["spawnerr"]
    site.run("start", "web", check=True)
