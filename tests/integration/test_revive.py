"""After maintenance and faults, one `siteboot revive` converges: real supervisords, real faults."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest

from tests.helpers import REPO, SITEBOOT, supervisords

pytestmark = pytest.mark.slow


def program_pids(site: Any) -> dict[str, int]:
    _, data = site.status()
    return {p["name"]: p["pid"] for inst in data["instances"] for p in inst["programs"]}


def demo_processes(site: Any) -> list[psutil.Process]:
    """The site's program processes (they carry SUPERVISOR_SERVER_URL into the site's dirs)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "siteboot.demo" in " ".join(proc.info["cmdline"] or []) and \
                    str(site.base) in proc.environ().get("SUPERVISOR_SERVER_URL", ""):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill9(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def supervisord_of(site: Any, instance: str) -> int:
    (pid,) = [p for p in supervisords(site.base)
              if str(site.runtime(instance)) in " ".join(psutil.Process(p).cmdline())]
    return pid


def test_kill_9_of_one_then_of_all_supervisords_then_one_revive(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    web_log = site.runtime("alpha") / "logs" / "web.out.log"
    assert web_log.exists()

    kill9([supervisord_of(site, "alpha")])
    orphan = [p.pid for p in demo_processes(site) if "serve" in " ".join(p.cmdline())]
    assert orphan, "the web program outlives its killed supervisord"
    result = site.run("revive")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dev alpha: started" in result.stdout
    assert "orphaned process" in result.stdout
    assert f"pid {orphan[0]}" in result.stdout
    assert "dev beta" not in result.stdout  # nothing to do there
    assert not psutil.pid_exists(orphan[0])
    site.wait_status(0)

    kill9(supervisords(site.base))
    result = site.run("revive")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dev alpha: started" in result.stdout
    assert "dev beta: started" in result.stdout
    data = site.wait_status(0)
    assert len(supervisords(site.base)) == 2
    # no program runs twice: exactly the planned processes, each once
    running = sorted(p.environ()["SUPERVISOR_PROCESS_NAME"] for p in demo_processes(site))
    assert running == ["web", "worker_00", "worker_01"]
    assert {p["state"] for i in data["instances"] for p in i["programs"]} == {"RUNNING"}
    assert web_log.exists()  # logs survive every step

    again = site.run("revive")
    assert (again.returncode, again.stdout.strip()) == (0, "nothing to do")


def test_wiped_runtime_dir_is_restored_without_restarting_programs(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    before = program_pids(site)
    keys = {p: p.read_bytes() for p in (site.state() / "keys").iterdir()}
    daemons = sorted(supervisords(site.base))
    shutil.rmtree(site.base / "run")  # the maintenance /tmp purge

    rc, data = site.status()
    assert rc == 1, data
    assert {i["state"] for i in data["instances"]} == {"running (runtime dir lost)"}
    result = site.run("revive")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("runtime dir restored") == 2
    assert program_pids(site) == before
    assert sorted(supervisords(site.base)) == daemons
    assert {p: p.read_bytes() for p in (site.state() / "keys").iterdir()} == keys
    log = site.runtime("beta") / "logs" / "worker_00.out.log"
    deadline = time.monotonic() + 10
    while not (log.exists() and log.stat().st_size > 0):  # the workers log again, into new files
        assert time.monotonic() < deadline, "logs were not reopened"
        time.sleep(0.1)
    assert site.status()[0] == 0
    assert site.run("revive").stdout.strip() == "nothing to do"
    assert site.run("down", check=True).returncode == 0  # over the port: the socket is gone
    assert supervisords(site.base) == []


def test_pidfile_reused_by_an_unrelated_process_is_never_signalled(site_factory):
    site = site_factory()
    site.run("up", "-i", "alpha", check=True)
    kill9([supervisord_of(site, "alpha")])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (site.runtime("alpha") / "supervisord.pid").write_text(f"{bystander.pid}\n")
        result = site.run("revive")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "not this instance's supervisord; it was left alone" in result.stdout
        assert bystander.poll() is None
        site.run("down", check=True)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_five_revives_at_once_leave_one_supervisord_each(site_factory):
    site = site_factory()
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: site.run("revive"), range(5)))
    assert all(r.returncode == 0 for r in results), [r.stdout + r.stderr for r in results]
    assert len(supervisords(site.base)) == 2
    assert sum(r.stdout.count("dev alpha: started") for r in results) == 1
    running = sorted(p.environ()["SUPERVISOR_PROCESS_NAME"] for p in demo_processes(site))
    assert running == ["web", "worker_00", "worker_01"]


def test_an_operator_stop_survives_revive_up_and_edits(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    site.run("stop", "worker", check=True)
    assert site.run("revive").stdout.strip() == "nothing to do"
    rc, data = site.status()
    assert rc == 0  # stopped on purpose: nothing for a monitor to report
    assert [p["state"] for p in data["instances"][1]["programs"]] == ["STOPPED", "STOPPED"]

    # a fresh supervisord (after a kill) and an edit both start programs: stopped again
    kill9([supervisord_of(site, "beta")])
    result = site.run("revive")
    assert result.returncode == 0, result.stdout
    assert "stopped worker_00 again" in result.stdout
    site.path.write_text(site.path.read_text().replace("--interval 0.5", "--interval 0.4"))
    result = site.run("up", check=True)
    assert "stopped worker_01 again" in result.stdout
    assert [p["state"] for p in site.status()[1]["instances"][1]["programs"]] == \
        ["STOPPED", "STOPPED"]

    site.run("start", "worker", check=True)  # lifts the mark
    assert "nothing to do" in site.run("revive").stdout
    site.wait_status(0)


def test_up_and_revive_start_a_fatal_program(site_factory):
    site = site_factory(programs="""
        [programs.flaky]
        instance = "alpha"
        command = "sh -c 'test -e FLAG && exec sleep 600 || exit 3'"
        directory = "BASE"
        startsecs = 1
        startretries = 0
        """.replace("BASE", "{runtime_dir}"))
    site.run("up", "-i", "alpha")
    data = site.wait_status(2)
    assert data["instances"][0]["programs"][0]["state"] == "FATAL"
    result = site.run("up", "-i", "alpha")
    assert result.returncode == 1  # it should run and does not: said, with its state
    assert "flaky" in result.stdout
    assert "FATAL" in result.stdout
    (site.runtime("alpha") / "FLAG").touch()
    result = site.run("revive")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started flaky (was FATAL)" in result.stdout


def test_a_supervisord_shutting_down_is_waited_for(site_factory):
    site = site_factory(programs="""
        [programs.slowstop]
        instance = "alpha"
        command = "sh -c 'trap \\"sleep 3; exit 0\\" TERM; while :; do sleep 0.1; done'"
        startsecs = 1
        stopwaitsecs = 20
        """)
    site.run("up", "-i", "alpha", check=True)
    site.wait_status(0, "-i", "alpha")
    site.run("ctl", "-i", "alpha", "--", "shutdown", check=True)
    rc, data = site.status("-i", "alpha")
    assert data["instances"][0]["state"] == "shutting down"
    assert rc == 2
    assert all(p["state"] != "NOT LOADED" for p in data["instances"][0]["programs"])
    result = site.run("up", "-i", "alpha")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "finish shutting down" in result.stdout
    site.wait_status(0, "-i", "alpha")
    site.run("ctl", "-i", "alpha", "--", "shutdown", check=True)
    result = site.run("down", "-i", "alpha")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "internal error" not in result.stderr
    assert supervisords(site.base) == []


def test_down_without_rpc_signals_at_once_and_honours_stopwaitsecs(site_factory):
    # a program that takes 4 s to checkpoint on SIGTERM, allowed 15: it must finish
    trap = "trap \\\"sleep 4; touch {runtime_dir}/saved; exit 0\\\" TERM"
    checkpoint = """
        [programs.saver_NAME]
        instance = "NAME"
        command = "sh -c 'TRAP; while :; do sleep 0.1; done'"
        startsecs = 1
        stopwaitsecs = 15
        """
    checkpoint = checkpoint.replace("TRAP", trap)
    site = site_factory(programs=checkpoint.replace("NAME", "alpha") + checkpoint.replace("NAME", "beta"))
    site.run("up", check=True)
    site.wait_status(0)
    shutil.rmtree(site.state() / "keys")  # no key: no RPC, only signals
    result = site.run("down")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("sent SIGTERM") == 2
    assert (site.runtime("alpha") / "saved").exists()
    assert (site.runtime("beta") / "saved").exists()
    assert supervisords(site.base) == []


def test_orphans_of_a_killed_supervisord_are_stopped_by_down(site_factory):
    site = site_factory()
    site.run("up", "-i", "alpha", check=True)
    site.wait_status(2)  # beta is down
    kill9([supervisord_of(site, "alpha")])
    (orphan,) = demo_processes(site)
    result = site.run("down", "-i", "alpha")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "orphaned process" in result.stdout
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE


def test_drifted_instances_are_listed_and_stopped_by_down_orphans(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    old = sorted(supervisords(site.base))
    site.path.write_text(site.path.read_text().replace(f'"{site.base}/run"', f'"{site.base}/run2"'))
    rc, data = site.status()
    assert rc == 2  # the site as it reads now is not running
    orphaned = [i for i in data["instances"] if i["state"] == "orphaned"]
    assert sorted(i["pid"] for i in orphaned) == old
    assert "siteboot down --orphans" in orphaned[0]["error"]
    assert site.run("down").returncode == 0
    assert sorted(supervisords(site.base)) == old  # plain down leaves them: not in the site
    result = site.run("down", "--orphans")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("recorded as started from") == 2
    assert supervisords(site.base) == []


def test_a_broken_site_file_does_not_block_down(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.path.write_text(site.path.read_text() + "\n[programs.broken\n")
    assert site.run("status").returncode == 3
    result = site.run("down")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stopping what the records say" in result.stderr
    assert supervisords(site.base) == []


@pytest.fixture
def tiny_disk(site_factory):
    """A site whose runtime dir lies on a 1 MB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    site = site_factory()
    run = site.base / "run"
    run.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(run)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr!r}")
    try:
        yield site
    finally:
        site.run("down", timeout=60)
        subprocess.run(["umount", "-l", str(run)], check=False)


def test_a_full_disk_names_the_file_and_a_healthy_instance_is_not_failed(tiny_disk):
    site = tiny_disk
    site.run("up", check=True)
    site.wait_status(0)
    filler = site.base / "run" / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k", "count=64"],
                   capture_output=True, check=False)  # fills the disk, then fails: intended
    site.path.write_text(site.path.read_text().replace("--interval 0.5", "--interval 0.4"))
    result = site.run("up")
    assert "internal error" not in result.stderr
    assert "No space left on device" in result.stdout
    assert str(site.runtime("beta") / "supervisord-beta.conf") in result.stdout
    assert "still serving" in result.stdout
    assert result.returncode == 0, result.stdout  # both still serve: nothing failed
    assert site.status()[0] == 0
    filler.unlink()
    result = site.run("up", check=True)
    assert "beta: updated" in result.stdout


def test_a_foreign_process_on_a_program_port_is_named(site_factory):
    site = site_factory()
    squatter = subprocess.Popen([sys.executable, "-m", "http.server", str(site.ports["web"]),
                                 "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not any(getattr(c.laddr, "port", None) == site.ports["web"]
                      for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        doctor = site.run("doctor")
        assert doctor.returncode == 1
        assert f"port {site.ports['web']} of program web (dev) is in use on this host by " \
               f"pid {squatter.pid}" in doctor.stdout
        up = site.run("up")  # refused at once: the port web needs is taken
        assert up.returncode == 1
        assert f"held by pid {squatter.pid}" in up.stdout
        result = site.run("revive", "--timeout", "5")
        assert result.returncode == 1
        assert f"held by pid {squatter.pid}" in result.stdout
        _, data = site.status("-i", "alpha")
        assert data["instances"][0]["state"] == "not running"
    finally:
        squatter.kill()
        squatter.wait()


def test_doctor_on_a_healthy_site_and_after_a_kill(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    data = json.loads(site.run("doctor", "--json").stdout)
    assert [f for f in data["findings"] if not f["ok"] and f["check"] != "cron"] == []
    kill9([supervisord_of(site, "alpha")])
    result = site.run("doctor")
    assert result.returncode == 1
    assert "alpha: 1 program process(es) without their supervisord" in result.stdout
    assert "stale pidfile" in result.stdout
    assert "siteboot revive" in result.stdout


def test_a_second_checkout_of_the_same_account_does_not_take_instances_over(site_factory, tmp_path):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "siteboot", clone / "siteboot",
                    ignore=shutil.ignore_patterns("__pycache__"))
    other = [sys.executable, "-c",
             f"import sys; sys.path.insert(0, {str(clone)!r}); from siteboot.cli import main; main()"]
    pids = program_pids(site)
    for command in ("up", "down"):
        result = subprocess.run([*other, command, "-i", "alpha"], env=site.env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"started by the siteboot in {REPO / 'siteboot'}" in result.stdout
        assert f"this is {clone / 'siteboot'}" in result.stdout
    assert program_pids(site) == pids  # nothing was reloaded or stopped
    assert site.run("down", check=True).returncode == 0


def test_no_new_key_for_a_running_instance_under_a_wrong_home(site_factory):
    site = site_factory()
    site.run("up", "-i", "alpha", check=True)
    key = (site.state() / "keys" / "alpha.key").read_bytes()
    elsewhere = dict(site.env, HOME=str(site.base / "not-home"))
    # the state dir follows HOME here: the key is "missing" where this run looks for it
    site.path.write_text(site.path.read_text().replace(f'state_dir = "{site.base}/state"',
                                                       'state_dir = "~/state"'))
    result = subprocess.run([*SITEBOOT, "up", "-i", "alpha"], env=elsewhere, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "siteboot makes no new key for a running instance" in result.stdout
    assert not (site.base / "not-home" / "state" / "keys" / "alpha.key").exists()
    site.path.write_text(site.path.read_text().replace('state_dir = "~/state"',
                                                       f'state_dir = "{site.base}/state"'))
    assert (site.state() / "keys" / "alpha.key").read_bytes() == key
    assert site.wait_status(0, "-i", "alpha")


def test_a_wiped_instance_without_a_start_record_is_restored_not_replaced(site_factory):
    """Started by a siteboot from before the records (or the record write hit a full disk)."""
    site = site_factory()
    site.run("up", "-i", "alpha", check=True)
    site.wait_status(0, "-i", "alpha")
    before = program_pids(site)["web"]
    shutil.rmtree(site.base / "home" / ".local" / "state" / "siteboot" / "started")
    shutil.rmtree(site.base / "run")
    result = site.run("up", "-i", "alpha")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runtime dir restored" in result.stdout
    assert program_pids(site)["web"] == before
