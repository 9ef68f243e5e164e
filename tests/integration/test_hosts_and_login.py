"""Hosts and the login environment with real supervisord: instances placed on two hosts (this
machine playing both through SITEBOOT_HOST), and programs started after a login preamble."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import processes_under, wait_until

pytestmark = pytest.mark.slow

SCRIPT = """
import os, sys, time
with open(sys.argv[1], "w") as out:
    out.write("|".join([str(os.getpid()), os.environ.get("GREETING", "-"),
                        os.environ.get("FROM_PROFILE", "-")]))
while True:
    time.sleep(1)
"""


def started_as(out: Path, pid: int) -> list[str]:
    """What the process ``pid`` wrote at its start (it is the process supervisord started)."""
    return list(wait_until(lambda: out.exists() and out.read_text().split("|")[0] == str(pid)
                           and out.read_text().split("|"), timeout=60))


def web(site: Any) -> dict[str, Any]:
    _, data = site.status()
    return dict(data["instances"][0]["programs"][0])


def test_programs_start_after_the_preamble_and_are_stopped_by_their_own_pid(site_factory):
    site = site_factory("""
        [programs.web]
        instance = "alpha"
        command = "{python} BASE/script.py BASE/web.out"
        startsecs = 1
        """, extra_site='preamble = ["export GREETING=\'from the preamble\'", "cd /"]')
    site.path.write_text(site.path.read_text().replace("BASE", str(site.base)))
    (site.base / "script.py").write_text(SCRIPT)
    home = Path(site.env["HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / ".bash_profile").write_text("export FROM_PROFILE=login\n")  # a login shell reads it

    site.run("up", check=True)
    site.wait_status(0, "-i", "alpha", timeout=60)
    running = web(site)
    pid = running["pid"]
    assert started_as(site.base / "web.out", pid) == [str(pid), "from the preamble", "login"]
    process = psutil.Process(pid)
    assert Path(process.cmdline()[1]).name == "script.py"  # the shell exec'd it: no shell stays
    assert process.ppid() == psutil.Process(site.status()[1]["instances"][0]["pid"]).pid

    stopped = site.run("stop", "web")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert web(site)["state"] == "STOPPED"
    site.run("start", "web", check=True)
    again = web(site)["pid"]
    assert again != pid
    assert started_as(site.base / "web.out", again)[1:] == ["from the preamble", "login"]
    site.run("down", check=True)
    assert processes_under(site.base) == []


def test_a_failing_preamble_keeps_the_program_from_starting_and_says_why(site_factory):
    site = site_factory("""
        [programs.web]
        instance = "alpha"
        command = "sleep 1000"
        startsecs = 1
        startretries = 0
        """, extra_site='preamble = ["module load python/3.11"]')  # no module system here
    site.run("up", "-i", "alpha")
    wait_until(lambda: web(site)["state"] == "FATAL", timeout=60)
    log = site.run("tail", "--stderr", "web").stdout
    assert "siteboot: the preamble failed (exit 127): not starting sleep" in log


def hosted_site(site: Any) -> None:
    """Instance alpha on h1, beta on h2 (ports of their own: both hosts are this machine)."""
    ports = site.ports
    site.path.write_text(textwrap.dedent(f"""
        [site]
        name = "it"
        envs = ["dev"]
        runtime_dir = "{site.base}/run"
        state_dir = "{site.base}/state"

        [instances.alpha]
        host = "h1.example.org"
        port = {{ dev = {ports["alpha"]} }}

        [instances.beta]
        host = "h2"
        port = {{ dev = {ports["beta"]} }}

        [programs.web]
        instance = "alpha"
        command = "{{python}} -m siteboot.demo serve --port {{port}}"
        port = {{ dev = {ports["web"]} }}
        startsecs = 1

        [programs.worker]
        instance = "beta"
        command = "{{python}} -m siteboot.demo work --interval 0.5"
        startsecs = 1
        """))


def test_each_host_runs_its_own_instances_and_lists_the_others(site_factory):
    site = site_factory()
    hosted_site(site)
    h1, h2 = {"SITEBOOT_HOST": "h1"}, {"SITEBOOT_HOST": "h2.example.org"}
    try:
        up = site.run("up", extra_env=h1)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "alpha: started" in up.stdout
        assert "beta: skipped: on h2" in up.stdout
        status = site.run("status", "--json", extra_env=h1)
        assert status.returncode in (0, 1), status.stdout  # beta does not count here
        assert '"state": "elsewhere"' in status.stdout
        table = site.run("status", extra_env=h1).stdout
        assert f"beta ({site_user(site)}) on h2" in table

        site.run("up", check=True, extra_env=h2)
        wait_until(lambda: site.run("status", extra_env=h2).returncode == 0, timeout=60)
        wait_until(lambda: site.run("status", extra_env=h1).returncode == 0, timeout=60)
        revive = site.run("revive", extra_env=h1)
        assert revive.returncode == 0, revive.stdout
        assert "beta: on h2" in revive.stdout
        refused = site.run("restart", "worker", extra_env=h1)
        assert refused.returncode == 2
        assert "runs on h2, not on this host (h1)" in refused.stderr
    finally:
        for host in (h1, h2):
            site.run("down", extra_env=host)
    assert processes_under(site.base) == []


def site_user(site: Any) -> str:
    import pwd

    return pwd.getpwuid(psutil.Process().uids().effective).pw_name
