"""Startup order, readiness and self-healing with real supervisords (issue 13): a dependant
starts only once its dependency's port accepts, stops before it; a readiness timeout stops the
chain and names the probe; a program that fails its first starts ends up RUNNING by itself; a
failing HTTP probe makes status exit 1; several programs start and stop in priority waves."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, SITEBOOT, wait_until

pytestmark = pytest.mark.slow

SERVICE = f"{{python}} {REPO}/tests/fixtures/service.py"

ORDERED = """
[programs.db]
instance = "beta"
command = "SERVICE --delay 2 --port {port} --listening {runtime_dir}/db.listening"
port = { dev = PORT_SPARE }
startsecs = 1
ready = { tcp = "{port}" }
ready_timeout = READY_TIMEOUT

[programs.app]
instance = "alpha"
command = "SERVICE --started {runtime_dir}/app.started --port {port}"
port = { dev = PORT_WEB }
startsecs = 1
depends_on = ["db"]
ready = { http = "http://127.0.0.1:{port}/health", status = 200 }
"""


def ordered(ready_timeout: int = 60) -> str:
    return ORDERED.replace("SERVICE", SERVICE).replace("READY_TIMEOUT", str(ready_timeout))


def stamp(path: Path) -> float:
    return float(path.read_text())


def log_events(site, instance: str) -> list[str]:
    """``spawned: 'x'`` and ``stopped: x`` lines of an instance's supervisord log, in order."""
    text = (site.runtime(instance) / "supervisord.log").read_text()
    return [f"{m.group(1)} {m.group(2)}" for m in
            re.finditer(r"(spawned|stopped): '?([\w.-]+)'?", text)]


def test_a_dependant_starts_once_its_dependency_accepts_and_stops_before_it(site_factory):
    site = site_factory(ordered())
    up = site.run("up", timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    listening = stamp(site.runtime("beta") / "db.listening")
    assert stamp(site.runtime("alpha") / "app.started") >= listening
    data = site.wait_status(0, timeout=60)
    rows = {p["name"]: p for i in data["instances"] for p in i["programs"]}
    assert rows["app"]["state"] == rows["db"]["state"] == "RUNNING"
    assert rows["siteboot-healer"]["state"] == "RUNNING"

    down = site.run("down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped app in dependency order (dependants first)" in down.stdout
    # app (alpha) went before db (beta): each log says when; db's log had no stop before
    alpha_log = (site.runtime("alpha") / "supervisord.log").read_text()
    beta_log = (site.runtime("beta") / "supervisord.log").read_text()
    app_stop = re.search(r"^(\S+ \S+) INFO stopped: app", alpha_log, re.M)
    db_stop = re.search(r"^(\S+ \S+) INFO stopped: db", beta_log, re.M)
    assert app_stop
    assert db_stop
    assert app_stop.group(1) <= db_stop.group(1)


def test_revive_after_a_kill_keeps_the_order(site_factory):
    """What cron runs after a reboot or a kill -9: the dependant comes back after its dependency
    is ready again, not beside it."""
    import os
    import signal

    from tests.helpers import supervisords

    # one instance: the killed one's orphans (db still listening) are stopped before it starts
    site = site_factory(ordered().replace('instance = "beta"', 'instance = "alpha"'))
    site.run("up", check=True, timeout=120)
    site.wait_status(0, timeout=60)
    for pid in supervisords(site.base):
        os.kill(pid, signal.SIGKILL)
    revive = site.run("revive", timeout=180)
    assert revive.returncode == 0, revive.stdout + revive.stderr
    # started by revive's waves or by the healer, whichever looked first: after db, either way
    assert stamp(site.runtime("alpha") / "app.started") >= \
        stamp(site.runtime("alpha") / "db.listening")


def test_a_readiness_timeout_stops_the_chain_and_says_which_probe(site_factory):
    site = site_factory(ordered(ready_timeout=3))
    alone = site.run("up", "-i", "alpha", timeout=120)  # db's instance is not up
    assert alone.returncode == 1
    port = site.ports["spare"]
    assert (f"app: not started: beta:db not ready after 3 s: tcp 127.0.0.1:{port}: "
            in alone.stdout + alone.stderr), alone.stdout + alone.stderr
    assert not (site.runtime("alpha") / "app.started").exists()
    # everything up: the chain goes on (what revive does after a reboot)
    both = site.run("up", timeout=120)
    assert both.returncode == 0, both.stdout + both.stderr
    assert stamp(site.runtime("alpha") / "app.started") >= \
        stamp(site.runtime("beta") / "db.listening")


def test_a_program_that_fails_its_first_five_starts_ends_up_running(site_factory):
    site = site_factory(f"""
        [programs.flaky]
        instance = "alpha"
        command = "{SERVICE} --count {{runtime_dir}}/flaky.count --fail-first 5"
        startsecs = 1
        startretries = 0
        restart = {{ backoff_max = 2 }}
        crash_loop_restarts = 10
        """)
    site.run("up", timeout=120)  # reports flaky FATAL: nobody acts on that
    data = site.wait_status(0, timeout=90)
    flaky = next(p for p in data["instances"][0]["programs"] if p["name"] == "flaky")
    assert flaky["state"] == "RUNNING"
    assert flaky["backoff"]["attempts"] >= 1
    assert flaky["backoff"]["next_try_s"] is None
    assert int((site.runtime("alpha") / "flaky.count").read_text()) == 6
    log = (site.runtime("alpha") / "logs" / "siteboot-healer.err.log").read_text()
    assert "flaky is FATAL: starting it again in 2 s" in log
    table = site.run("status").stdout
    header = next(line for line in table.splitlines() if line.strip().startswith("program"))
    assert header.split()[:4] == ["program", "state", "health", "backoff"]
    assert re.search(r"flaky\s+RUNNING\s+ready\s+\d+ tries", table), table


FAILING_WEB = f"""
[programs.web]
instance = "alpha"
command = "{SERVICE} --port {{port}} --status 500"
port = {{ dev = PORT_WEB }}
startsecs = 1
ready = {{ http = "http://127.0.0.1:{{port}}/health", status = 200 }}
"""


def test_a_failing_http_probe_shows_unhealthy_and_status_exits_1(site_factory):
    site = site_factory(FAILING_WEB)
    site.run("up", timeout=120)

    def unhealthy() -> dict[str, Any] | None:
        code, data = site.status()
        web = next(p for p in data["instances"][0]["programs"] if p["name"] == "web")
        return web if (code, web["state"], web["health"]) == (1, "RUNNING", "not ready") else None

    web = wait_until(unhealthy, timeout=60)
    assert web["health_detail"] == "HTTP 500 (want 200)"
    table = site.run("status")
    assert table.returncode == 1
    assert re.search(r"web\s+RUNNING\s+not ready", table.stdout), table.stdout
    assert "not ready: HTTP 500 (want 200)" in table.stdout


def test_several_programs_start_and_stop_in_priority_waves(site_factory):
    site = site_factory(f"""
        [programs.first]
        instance = "alpha"
        command = "{SERVICE}"
        startsecs = 1
        priority = 1

        [programs.second]
        instance = "alpha"
        command = "{SERVICE}"
        startsecs = 1
        priority = 2
        """)
    site.run("up", check=True, timeout=120)
    site.wait_status(0, timeout=60)
    before = len(log_events(site, "alpha"))
    result = site.run("restart", "all", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    events = log_events(site, "alpha")[before:]
    assert events == ["stopped second", "stopped first", "spawned first", "spawned second"]


def test_the_healer_starts_a_dependant_when_nobody_runs_siteboot(site_factory):
    """A supervisord started in the foreground (batch jobs, containers): its healer keeps the
    order, starting what waits once what it depends on is ready."""
    import subprocess

    site = site_factory(ordered().replace('instance = "beta"', 'instance = "alpha"'))
    render = site.run("render", "-i", "alpha", timeout=60)
    assert render.returncode == 0, render.stderr
    runner = subprocess.Popen([*SITEBOOT, "up", "--foreground", "-i", "alpha"], env=site.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = site.runtime("alpha") / "app.started"
        wait_until(lambda: started.exists() and started.read_text(), timeout=60)
        assert stamp(started) >= stamp(site.runtime("alpha") / "db.listening")
    finally:
        site.run("down", timeout=120)
        runner.wait(timeout=60)



def _healer_pids(site: Any) -> list[int]:
    import psutil

    spec = str(site.runtime("alpha") / "healer-alpha.json")
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if "siteboot.healer" in (p.info["cmdline"] or []) and spec in p.info["cmdline"]]


def _lost_healer_log(healer: int) -> str:
    """The listener's log that went with the runtime dir: supervisord still has it open."""
    import psutil

    folder = Path(f"/proc/{psutil.Process(healer).ppid()}/fd")
    for fd in folder.iterdir():
        try:
            if "siteboot-healer.err.log" in os.readlink(fd):
                return fd.read_text()
        except OSError:
            continue
    return ""


def test_the_healer_outlives_a_kill_and_a_wipe_and_ignores_a_planted_spec(site_factory, tmp_path):
    """kill -9 of the listener: supervisord starts it again and status keeps its verdicts. A
    /tmp wipe: another account could make the runtime dir again with a spec of its own, whose
    command probe the listener would run as this account; it is ignored, and revive writes the
    real one back."""
    import json
    import shutil
    import signal

    site = site_factory(FAILING_WEB)
    site.run("up", "-i", "alpha", timeout=120)

    def web_health() -> str:
        _, data = site.status()
        alpha = next(i for i in data["instances"] if i["name"] == "alpha")
        return str(next(p["health"] for p in alpha["programs"] if p["name"] == "web"))

    wait_until(lambda: web_health() == "not ready", timeout=60)
    [healer] = wait_until(lambda: _healer_pids(site), timeout=60)
    os.kill(healer, signal.SIGKILL)
    [again] = wait_until(lambda: [p for p in _healer_pids(site) if p != healer], timeout=60)
    wait_until(lambda: web_health() == "not ready", timeout=60)

    runtime = site.runtime("alpha")
    shutil.rmtree(runtime)
    runtime.mkdir(mode=0o755)
    marker = tmp_path / "planted-probe-ran"
    planted = {"programs": {"web": {"processes": ["web"], "autorestart": "unexpected",
                                    "probe": {"command": f"touch {marker}"}, "depends_on": []}},
               "health_path": str(tmp_path / "overwritten")}
    (runtime / "healer-alpha.json").write_text(json.dumps(planted))
    os.chown(runtime / "healer-alpha.json", 65534, 65534)
    os.chown(runtime, 65534, 65534)
    wait_until(lambda: "ignoring" in _lost_healer_log(again), timeout=60)
    assert not marker.exists()
    assert not (tmp_path / "overwritten").exists()
    assert web_health() == "not ready"  # the last good spec: it probes on, records on

    shutil.rmtree(runtime)
    revived = site.run("revive", timeout=120)  # exit 1: web is not ready
    assert "dev alpha: updated: runtime dir restored" in revived.stdout, revived.stdout
    spec = json.loads((runtime / "healer-alpha.json").read_text())
    assert spec["programs"]["web"]["probe"]["http"].endswith("/health")
    assert _healer_pids(site) == [again]
    wait_until(lambda: web_health() == "not ready", timeout=60)
    assert not marker.exists()


SQUATTER = "sbt_ak_squat"


@pytest.mark.users
def test_another_account_on_the_dependency_s_port_does_not_pass_its_probe(site_factory):
    """Another account listens on db's port before db starts (db then cannot bind): a plain
    connect would pass db's probe and start app against that account's listener."""
    import pwd
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd")
    subprocess.run(["userdel", SQUATTER], check=False, capture_output=True)
    subprocess.run(["useradd", "-M", "-s", "/bin/false", SQUATTER], check=True)
    squatter = None
    try:
        account = pwd.getpwnam(SQUATTER)
        site = site_factory(ordered(ready_timeout=3))
        port = site.ports["spare"]
        squatter = subprocess.Popen(["/usr/bin/python3", "-I", "-m", "http.server", str(port),
                                     "--bind", "127.0.0.1"], user=account.pw_uid,
                                    group=account.pw_gid, extra_groups=[], cwd="/",
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _accepts(port))
        alone = site.run("up", "-i", "alpha", timeout=120)
        assert alone.returncode == 1, alone.stdout + alone.stderr
        assert (f"app: not started: beta:db not ready after 3 s: tcp 127.0.0.1:{port}: port "
                f"{port} is held by {SQUATTER}, not {pwd.getpwuid(os.geteuid()).pw_name}"
                in alone.stdout), alone.stdout
        assert not (site.runtime("alpha") / "app.started").exists()
    finally:
        if squatter is not None:
            squatter.kill()
            squatter.wait()
        subprocess.run(["userdel", SQUATTER], check=False, capture_output=True)


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
