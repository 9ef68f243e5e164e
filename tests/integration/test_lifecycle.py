"""up / status / start / stop / restart / tail / ctl / down against real supervisord processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.helpers import SITEBOOT, Interactive, processes_under, supervisords

pytestmark = pytest.mark.slow


def test_up_status_down_leaves_nothing(site_factory):
    site = site_factory()
    first = site.run("up", check=True)
    assert "alpha: started" in first.stdout
    assert "beta: started" in first.stdout
    data = site.wait_status(0)
    assert data["site"] == "it"
    assert data["env"] == "dev"
    assert data["ok"] is True
    alpha = data["instances"][0]
    assert set(alpha) == {"name", "user", "state", "pid", "url", "error", "host", "programs"}
    assert alpha["state"] == "running"
    assert alpha["url"] == f"unix://{site.runtime(alpha['name'])}/supervisor.sock"
    program = alpha["programs"][0]
    assert set(program) == {"name", "group", "state", "pid", "uptime_s", "exitstatus", "spawnerr",
                            "restarts", "last_exit", "health", "health_detail", "backoff", "log_tail"}
    assert program["group"] == "it-dev"
    assert program["state"] == "RUNNING"
    workers = [p["name"] for p in data["instances"][1]["programs"]]
    assert workers == ["worker_00", "worker_01"]

    again = site.run("up", check=True)
    assert again.stdout.count("already running") == 2
    assert len(supervisords(site.base)) == 2

    down = site.run("down", check=True)
    assert "alpha: stopped" in down.stdout
    assert processes_under(site.base) == []
    # logs survive a plain down; the socket and pidfile do not
    assert (site.runtime("beta") / "logs" / "worker_00.out.log").exists()
    assert not (site.runtime("beta") / "supervisor.sock").exists()
    assert not (site.runtime("beta") / "supervisord.pid").exists()
    rc, data = site.status()
    assert rc == 2
    assert data["instances"][0]["state"] == "not running"
    assert "siteboot up" in data["instances"][0]["error"]

    site.run("down", "--purge", check=True)
    assert not site.runtime("beta").exists()


def test_runtime_dirs_and_key_modes(site_factory):
    site = site_factory()
    site.run("up", check=True)
    assert os.stat(site.base / "run").st_mode & 0o7777 == 0o700  # one account: private
    for inst in ("alpha", "beta"):
        assert os.stat(site.runtime(inst)).st_mode & 0o777 == 0o700
        key = site.state() / "keys" / f"{inst}.key"
        assert os.stat(key).st_mode & 0o777 == 0o600
        secret = key.read_text().strip()
        conf = (site.runtime(inst) / f"supervisord-{inst}.conf").read_text()
        assert secret not in conf
        assert os.stat(site.runtime(inst) / "supervisor.sock").st_mode & 0o777 == 0o700
    assert os.stat(site.state()).st_mode & 0o777 == 0o700


def test_status_exit_codes_for_each_state(site_factory):
    site = site_factory("""
        [programs.web]
        instance = "alpha"
        command = "{python} -m siteboot.demo serve --port {port}"
        port = { dev = PORT_WEB }
        startsecs = 1

        [programs.slow]
        instance = "beta"
        command = "{python} -m siteboot.demo work --interval 1"
        startsecs = 30
        autostart = false

        [programs.crash]
        instance = "beta"
        command = "{python} -c 'import sys; sys.exit(3)'"
        startsecs = 1
        startretries = 0
        autostart = false
        """)
    site.run("up", check=True)
    data = site.wait_status(0)
    # autostart=false programs that are STOPPED are fine
    assert {p["name"]: p["state"] for p in data["instances"][1]["programs"]} == {
        "slow": "STOPPED", "crash": "STOPPED"}

    # STARTING -> 1
    proc = subprocess.Popen([*SITEBOOT, "start", "slow"], env=site.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        data = site.wait_status(1, timeout=10)
        assert [p["state"] for p in data["instances"][1]["programs"] if p["name"] == "slow"] == \
            ["STARTING"]
    finally:
        proc.kill()
        proc.wait()
    site.run("stop", "slow", check=True)

    # FATAL -> 2, with the failure shown
    result = site.run("start", "crash")
    assert result.returncode == 1
    assert "FATAL" in result.stdout
    rc, data = site.status()
    assert rc == 2
    crash = next(p for p in data["instances"][1]["programs"] if p["name"] == "crash")
    assert crash["state"] == "FATAL"

    # STOPPED (of a program that should run, stopped behind siteboot's back) -> 2
    site.run("start", "crash")  # leave FATAL behind: stop it from counting
    site.run("ctl", "-i", "alpha", "--", "stop", "it-dev:web", check=True)
    rc, data = site.status("-i", "alpha")
    assert rc == 2
    assert data["instances"][0]["programs"][0]["state"] == "STOPPED"
    # ... but one an operator stopped with `siteboot stop` is meant to be down -> 0
    site.run("stop", "web", check=True)
    rc, data = site.status("-i", "alpha")
    assert rc == 0
    assert data["instances"][0]["programs"][0]["state"] == "STOPPED"
    site.run("start", "web", check=True)
    assert site.status("-i", "alpha")[0] == 0

    # an instance down -> 2
    site.run("down", "-i", "alpha", check=True)
    rc, data = site.status("-i", "alpha")
    assert rc == 2
    assert data["instances"][0]["state"] == "not running"


def test_wrong_key_and_missing_key_are_told_apart(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    key = site.state() / "keys" / "alpha.key"
    original = key.read_text()
    key.write_text("not-the-key\n")
    try:
        rc, data = site.status("-i", "alpha")
        assert rc == 3
        assert data["instances"][0]["state"] == "refused: wrong key"
        assert "401" in data["instances"][0]["error"]
        key.unlink()
        rc, data = site.status("-i", "alpha")
        assert rc == 3
        assert data["instances"][0]["state"] == "no key"
    finally:
        key.write_text(original)
    assert site.status("-i", "alpha")[0] == 0


def test_start_stop_restart_names(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    pids_before = {p["name"]: p["pid"] for i in site.status()[1]["instances"] for p in i["programs"]}

    result = site.run("restart", "beta:*", check=True)
    assert "beta:worker_00: restarted" in result.stdout
    assert "beta:worker_01: restarted" in result.stdout
    result = site.run("stop", "beta:worker_01", check=True)
    assert result.stdout.strip() == "beta:worker_01: stopped"
    result = site.run("start", "worker", check=True)
    assert "beta:worker_00: already running" in result.stdout
    assert "beta:worker_01: started" in result.stdout
    result = site.run("restart", "all", "--json", check=True)
    assert '"ok": true' in result.stdout
    pids_after = {p["name"]: p["pid"] for i in site.status()[1]["instances"] for p in i["programs"]}
    assert all(pids_after[name] != pid for name, pid in pids_before.items())

    bad = site.run("start", "wrker")
    assert bad.returncode == 2
    assert "did you mean 'worker'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_tail_and_follow_across_rotation(site_factory):
    site = site_factory("""
        [programs.chatty]
        instance = "alpha"
        command = "{python} -m siteboot.demo work --interval 0.003"
        startsecs = 0
        log_maxbytes = "4KB"
        log_backups = 2
        """)
    site.run("up", check=True)
    time.sleep(0.5)
    once = site.run("tail", "chatty", check=True)
    assert "heartbeat" in once.stdout

    follower = subprocess.Popen([*SITEBOOT, "tail", "-f", "chatty", "--bytes", "0"],
                                env=site.env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(6)  # several rotations of a 4 KB log
    finally:
        follower.send_signal(signal.SIGINT)
        out, _ = follower.communicate(timeout=10)
    beats = [int(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "heartbeat" in line]
    assert len(beats) > 500, out[-500:]
    logs = list((site.runtime("alpha") / "logs").glob("chatty.out.log*"))
    assert len(logs) >= 2  # it did rotate
    gaps = [(a, b) for a, b in zip(beats, beats[1:]) if b != a + 1]
    assert gaps == [], f"missing lines across rotation: {gaps[:5]}"


def test_stale_pidfile_pointing_at_unrelated_process(site_factory):
    site = site_factory()
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        site.runtime("alpha").mkdir(parents=True)
        os.chmod(site.base / "run", 0o1777)
        os.chmod(site.runtime("alpha"), 0o700)
        (site.runtime("alpha") / "supervisord.pid").write_text(f"{bystander.pid}\n")
        (site.runtime("alpha") / "supervisor.sock").write_text("")  # a dead socket file
        result = site.run("up", check=True)
        assert "removed stale pidfile" in result.stdout
        assert "removed stale socket" in result.stdout
        assert bystander.poll() is None, "an unrelated process was signalled"
        site.wait_status(0)
        site.run("down", check=True)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_supervisord_that_lost_its_runtime_files_is_restored_without_restarting(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    (old,) = [p for p in supervisords(site.base) if str(site.runtime("alpha")) in
              " ".join(psutil.Process(p).cmdline())]
    _, data = site.status("-i", "alpha")
    web_pid = data["instances"][0]["programs"][0]["pid"]
    # what a /tmp cleaner does to a running instance
    (site.runtime("alpha") / "supervisor.sock").unlink()
    (site.runtime("alpha") / "supervisord.pid").unlink()
    rc, data = site.status("-i", "alpha")
    assert rc == 0, data  # it still serves: reached on its port, with its key
    assert data["instances"][0]["url"].startswith("http://127.0.0.1:")
    assert "control socket was lost" in data["instances"][0]["error"]
    result = site.run("up", "-i", "alpha", check=True)
    assert "restored" in result.stdout
    assert psutil.pid_exists(old)
    assert len(supervisords(site.base)) == 2
    rc, data = site.status("-i", "alpha")
    assert rc == 0
    assert data["instances"][0]["programs"][0]["pid"] == web_pid  # not restarted
    assert (site.runtime("alpha") / "supervisord.pid").read_text().strip() == str(old)


def test_concurrent_up_leaves_exactly_one_supervisord_each(site_factory):
    site = site_factory()
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: site.run("up"), range(5)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert sum(r.stdout.count("started") for r in results) == 2
    assert len(supervisords(site.base)) == 2
    site.wait_status(0)


def test_foreground_runs_until_signalled(site_factory):
    site = site_factory()
    proc = subprocess.Popen([*SITEBOOT, "up", "--foreground", "-i", "alpha"], env=site.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while site.status("-i", "alpha")[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        rc, data = site.status("-i", "alpha")
        assert rc == 0
        assert data["instances"][0]["pid"] == proc.pid  # exec'd: supervisord is this process
        assert site.run("up", "--foreground", "-i", "alpha").returncode == 1
        assert site.run("up", "--foreground").returncode == 2  # needs --instance
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert processes_under(site.base) == []


def test_ctl_runs_real_supervisorctl_through_the_relay(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    result = site.run("ctl", "-i", "alpha", "--", "status")
    assert result.returncode == 0, result.stderr
    assert "it-dev:web" in result.stdout
    assert "RUNNING" in result.stdout
    assert site.run("ctl", "-i", "alpha", "--", "stop", "it-dev:web").stdout == "it-dev:web: stopped\n"
    assert site.run("ctl", "-i", "alpha", "--", "start", "it-dev:web").stdout == "it-dev:web: started\n"
    result = site.run("ctl", "-i", "alpha", "--", "tail", "it-dev:web")
    assert "serving on 127.0.0.1" in result.stdout
    # the owner keeps everything, shutting the instance down included
    assert site.run("ctl", "-i", "alpha", "--", "avail").stdout.startswith("it-dev:web ")
    assert not list(site.state().glob("supervisorctl-*"))  # no client config with the key


def test_ctl_session_never_holds_the_key(site_factory):
    site = site_factory()
    site.run("up", "-i", "alpha", check=True)
    key = (site.state() / "keys" / "alpha.key").read_text().strip()
    session = Interactive([*SITEBOOT, "ctl", "-i", "alpha"], env=site.env)
    try:
        assert "it-dev:web" in session.expect("it-alpha-dev> ")  # it starts with `status`
        supervisorctl = next(p for p in psutil.Process(session.proc.pid).children(recursive=True)
                             if "supervisor.supervisorctl" in p.cmdline())
        conf = Path(supervisorctl.cmdline()[supervisorctl.cmdline().index("-c") + 1])
        assert os.stat(conf).st_mode & 0o777 == 0o600
        assert os.stat(conf.parent).st_mode & 0o777 == 0o700
        assert key not in conf.read_text()
        assert "password = " in conf.read_text()
        for proc in psutil.process_iter(["cmdline", "environ"]):
            try:
                assert key not in " ".join(proc.info["cmdline"] or [])
                assert key not in " ".join((proc.info["environ"] or {}).values())
            except psutil.AccessDenied:
                continue
        session.send("tail it-dev:web")
        assert "serving on" in session.expect("it-alpha-dev> ")
        code, _ = session.finish()
    finally:
        session.kill()
    assert code == 0
    assert not conf.parent.exists()  # the relay's dir went with supervisorctl
    assert key not in (site.runtime("alpha") / "supervisord.log").read_text()


def test_unknown_instance_and_bad_site_are_clear(site_factory, tmp_path):
    site = site_factory()
    result = site.run("up", "-i", "gamma")
    assert result.returncode == 2
    assert "no instance 'gamma'" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[site\n")
    result = site.run("status", "--site", str(bad))
    assert result.returncode == 3
    assert "line 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_python_dash_m_entry_point(site_factory):
    site = site_factory()
    result = subprocess.run([sys.executable, "-m", "siteboot", "ports"], env=site.env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "supervisord-alpha" in result.stdout


def test_up_applies_an_edited_site_to_running_instances(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    site.path.write_text(site.path.read_text() + """
[programs.api]
instance = "alpha"
command = "{python} -m siteboot.demo serve --port {port}"
port = { dev = SPARE }
startsecs = 1
""".replace("SPARE", str(site.ports["spare"])))
    result = site.run("up", check=True)
    assert "alpha: updated: program api: added; reloaded it-dev (its programs restarted)" \
        in result.stdout
    assert "beta: already running" in result.stdout
    data = site.wait_status(0)
    assert [p["name"] for p in data["instances"][0]["programs"]] == ["api", "web"]
    # a changed supervisord port is reported, not applied behind the operator's back
    site.path.write_text(site.path.read_text().replace(
        f"dev = {site.ports['beta']}", f"dev = {site.ports['beta'] + 1}"))
    result = site.run("up", "-i", "beta", check=True)
    assert "server settings changed" in result.stdout


def test_a_busy_supervisord_is_never_killed_on_a_guess(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    pid = int((site.runtime("alpha") / "supervisord.pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # alive and ours, but not answering
    try:
        result = site.run("up", "-i", "alpha")
        assert result.returncode == 1
        assert "is running but not answering" in result.stdout
        assert psutil.pid_exists(pid)
    finally:
        os.kill(pid, signal.SIGCONT)
    site.wait_status(0)
    assert int((site.runtime("alpha") / "supervisord.pid").read_text()) == pid


def test_one_instance_failing_does_not_keep_the_others_down(site_factory):
    site = site_factory()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", site.ports["alpha"]))
    squatter.listen()
    try:
        result = site.run("up")
        assert result.returncode == 1
        assert "alpha: failed: nothing started, a port it needs is taken:\n    port " \
            f"{site.ports['alpha']} (supervisord-alpha) is held by pid {os.getpid()} (" \
            in result.stdout
        assert "beta: started" in result.stdout
        _, data = site.status("-i", "beta")
        assert data["instances"][0]["state"] == "running"
    finally:
        squatter.close()
