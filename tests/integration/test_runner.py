"""gitlab-runner, detached and supervised, with the stand-in (tests/fixtures/gitlab-runner) as
the real thing: revived once, left alone while alive, drained after its job, stopped at once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from tests.helpers import STAND_IN_RUNNER, wait_until

pytestmark = pytest.mark.slow

RUNNER = """
[runner]
instance = "alpha"
mode = "{mode}"
executable = "{executable}"
config = "{{state_dir}}/runner/config.toml"
drain_timeout = 30
"""


def runners(base: Path) -> list[int]:
    """Stand-in runners of a site (their config lies under its base)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if str(STAND_IN_RUNNER) in cmdline and any(str(base) in part for part in cmdline):
            found.append(proc.pid)
    return found


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"no JSON (exit {result.returncode}):\n{result.stdout}\n{result.stderr}") \
            from None


def jobs_in(log: str) -> tuple[list[str], list[str]]:
    return re.findall(r"job (\d+) started", log), re.findall(r"job (\d+) finished", log)


@pytest.fixture
def runner_site(site_factory: Any) -> Iterator[Callable[..., Any]]:
    """A site_factory site with a [runner] of instance alpha and its config in place; every
    runner it started is stopped, and none may be left."""
    made: list[Any] = []

    def make(mode: str = "detached", job_seconds: float = 1.5, executable: Path = STAND_IN_RUNNER,
             programs: str = "") -> Any:
        site = site_factory(programs=programs + RUNNER.format(mode=mode, executable=executable))
        (site.state() / "runner").mkdir(parents=True, mode=0o700)
        (site.state() / "runner" / "config.toml").write_text("concurrent = 1\n")
        (site.base / "home").mkdir()  # the runner's working directory: its HOME
        site.env["STANDIN_JOB_SECONDS"] = str(job_seconds)  # inherited by the runner
        made.append(site)
        return site

    yield make
    for site in made:
        site.run("runner", "stop", timeout=60)
        left = runners(site.base)
        assert left == [], f"runners left running: {left}"


def test_revive_starts_one_and_leaves_a_live_one_alone(runner_site):
    site = runner_site()
    assert site.run("runner", "status", "--json").returncode == 2

    first = json_of(site.run("runner", "revive", "--json", check=True))
    assert first["action"] == "started"
    (pid,) = first["pids"]
    log = site.state() / "gitlab-runner.log"
    wait_until(lambda: "Starting multi-runner" in read(log))
    record = json.loads((site.state() / "runner.json").read_text())
    assert record["pid"] == pid
    assert record["create_time"] == pytest.approx(psutil.Process(pid).create_time(), abs=0.01)
    assert os.stat(site.state() / "runner.json").st_mode & 0o777 == 0o600
    assert os.stat(log).st_mode & 0o777 == 0o600
    runner = psutil.Process(pid)
    assert os.getsid(pid) == pid  # its own session: no terminal hangup reaches it
    assert runner.cwd() == str(site.base / "home")  # no working_directory: the owner's home

    again = site.run("runner", "revive")
    assert again.returncode == 0
    assert f"already running: pid {pid}" in again.stdout
    assert runners(site.base) == [pid]

    status = site.run("runner", "status", "--json")
    assert status.returncode == 0
    before = json_of(status)
    assert (before["state"], before["pids"]) == ("running", [pid])
    assert before["detail"].startswith("started by siteboot at ")


def test_a_killed_runner_is_revived(runner_site):
    site = runner_site()
    (old,) = json_of(site.run("runner", "revive", "--json", check=True))["pids"]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: runners(site.base) == [])
    assert site.run("runner", "status").returncode == 2
    revived = json_of(site.run("runner", "revive", "--json", check=True))
    assert revived["action"] == "started"
    assert revived["pids"] != [old]
    assert runners(site.base) == revived["pids"]


def test_five_revives_at_once_start_one_runner(runner_site):
    site = runner_site()
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: site.run("runner", "revive", "--json"), range(5)))
    outcomes = [json_of(r) for r in results]
    assert [r.returncode for r in results] == [0] * 5
    assert sorted(o["action"] for o in outcomes) == ["already running"] * 4 + ["started"]
    assert len({tuple(o["pids"]) for o in outcomes}) == 1
    assert runners(site.base) == outcomes[0]["pids"]


def test_a_drained_runner_finishes_its_job_then_exits(runner_site):
    site = runner_site(job_seconds=2)
    (pid,) = json_of(site.run("runner", "revive", "--json", check=True))["pids"]
    log = site.state() / "gitlab-runner.log"
    wait_until(lambda: "job 1 started" in read(log))

    drained = site.run("runner", "drain", "--json")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    outcome = json_of(drained)
    assert (outcome["action"], outcome["pids"]) == ("drained", [pid])
    assert runners(site.base) == []
    text = read(log)
    started, finished = jobs_in(text)
    assert started == finished  # the job it was running when told to drain, finished
    _, after = text.split("received SIGQUIT", 1)
    assert "started" not in after  # no new job after SIGQUIT
    assert after.rstrip().endswith("graceful shutdown complete")

    status = site.run("runner", "status", "--json")
    assert status.returncode == 0  # stopped on purpose: as `siteboot status` counts it
    assert json_of(status)["state"] == "stopped"
    # `siteboot revive` leaves it stopped; asked explicitly, runner revive starts it again
    assert "gitlab-runner" in json.loads((site.state() / "operator-stops.json").read_text())
    assert json_of(site.run("runner", "revive", "--json", check=True))["action"] == "started"
    assert "gitlab-runner" not in json.loads((site.state() / "operator-stops.json").read_text())


def test_a_drain_longer_than_its_timeout_is_reported_and_stop_ends_it(runner_site):
    site = runner_site(job_seconds=60)
    (pid,) = json_of(site.run("runner", "revive", "--json", check=True))["pids"]
    log = site.state() / "gitlab-runner.log"
    wait_until(lambda: "job 1 started" in read(log))

    drain = site.run("runner", "drain", "--timeout", "0.5")
    assert drain.returncode == 1
    assert f"pid {pid} still running after 0.5 s" in drain.stdout
    assert runners(site.base) == [pid]  # told to drain, not killed

    stop = site.run("runner", "stop", "--json")
    assert stop.returncode == 0
    assert (json_of(stop)["action"], json_of(stop)["pids"]) == ("stopped", [pid])
    assert runners(site.base) == []
    assert "received SIGTERM: forceful shutdown" in read(log)
    assert jobs_in(read(log)) == (["1"], [])  # aborted, not finished


def test_an_executable_that_replaces_itself_is_not_left_running(runner_site, tmp_path: Path):
    """A wrapper that execs something else cannot be found again: revive stops what it started
    instead of starting one more on every run."""
    wrapper = tmp_path / "gitlab-runner"
    wrapper.write_text('#!/bin/sh\nexec python3 -c "import time; time.sleep(300)" "$@"\n')
    wrapper.chmod(0o755)
    site = runner_site(executable=wrapper)
    result = site.run("runner", "revive", "--json")
    assert result.returncode == 1
    outcome = json_of(result)
    assert outcome["action"] == "failed"
    assert "could not find it again; stopped it" in outcome["detail"]
    config = str(site.state() / "runner" / "config.toml")
    assert not [p for p in psutil.process_iter(["cmdline"]) if config in (p.info["cmdline"] or [])]


def test_supervised_runner_up_status_drain_revive_stop(runner_site):
    site = runner_site(mode="supervised", job_seconds=2)
    site.run("up", check=True)
    def runner_status() -> Any:
        return json_of(site.run("runner", "status", "--json"))

    running = wait_until(lambda: runner_status()["state"] == "running" and runner_status())
    assert running["mode"] == "supervised"
    assert (running["instance_state"], running["program_state"]) == ("running", "RUNNING")
    (pid,) = running["pids"]
    assert runners(site.base) == [pid]
    assert psutil.Process(pid).ppid() == site.status()[1]["instances"][0]["pid"]  # supervisord's child
    rc, data = site.status()
    assert rc == 0
    assert "gitlab-runner" in [p["name"] for p in data["instances"][0]["programs"]]

    log = site.runtime("alpha") / "logs" / "gitlab-runner.out.log"
    wait_until(lambda: "job 1 started" in read(log))
    drained = site.run("runner", "drain", "--json")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert json_of(drained)["action"] == "drained"
    assert runners(site.base) == []
    started, finished = jobs_in(read(log))
    assert started == finished
    assert read(log).rstrip().endswith("graceful shutdown complete")
    status = site.run("runner", "status", "--json")
    assert status.returncode == 0
    assert (json_of(status)["state"], json_of(status)["program_state"]) == ("stopped", "STOPPED")
    # held like any program an operator stopped: `up` does not start it again
    site.run("up", check=True)
    assert json_of(site.run("runner", "status", "--json"))["program_state"] == "STOPPED"

    # a runner started by hand on the same config: supervised revive refuses to make it two
    by_hand = subprocess.Popen([str(STAND_IN_RUNNER), "run", "-c", "runner/config.toml"],
                               cwd=site.state(), stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        def reported() -> bool:
            problems = json_of(site.run("runner", "status", "--json"))["problems"]
            return any(f"pid {by_hand.pid}" in p for p in problems)

        wait_until(reported)
        refused = site.run("runner", "revive")
        assert refused.returncode == 1
        assert "a runner outside supervisord also uses" in refused.stdout
    finally:
        by_hand.send_signal(signal.SIGTERM)
        by_hand.wait(timeout=30)

    revived = json_of(site.run("runner", "revive", "--json", check=True))
    assert revived["action"] == "started"
    (new_pid,) = revived["pids"]
    stop = site.run("runner", "stop", "--json")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert json_of(stop)["pids"] == [new_pid]
    assert "supervisord of alpha: STOPPED" in json_of(stop)["notes"]
    assert runners(site.base) == []
    assert "received SIGTERM: forceful shutdown" in read(log)


def test_revive_brings_back_a_killed_detached_runner_and_keeps_a_drained_one_down(runner_site):
    site = runner_site()
    result = site.run("revive")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dev gitlab-runner: started" in result.stdout
    (first,) = wait_until(lambda: runners(site.base) or None)
    shown = json_of(site.run("status", "--json"))["runner"]
    assert (shown["state"], shown["pids"]) == ("running", [first])
    assert "gitlab-runner (" in site.run("status").stdout
    assert "runner: gitlab-runner running" in site.run("doctor").stdout
    again = site.run("revive")
    assert (again.returncode, again.stdout.strip()) == (0, "nothing to do")  # alive: untouched
    assert runners(site.base) == [first]

    os.kill(first, signal.SIGKILL)  # what a maintenance reboot does to it
    wait_until(lambda: not psutil.pid_exists(first)
               or psutil.Process(first).status() == psutil.STATUS_ZOMBIE)
    rc, shown = site.status()
    assert (rc, shown["runner"]["state"]) == (2, "not running")  # monitoring sees it
    assert "is not running" in site.run("doctor").stdout
    result = site.run("revive")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dev gitlab-runner: started" in result.stdout
    (second,) = wait_until(lambda: runners(site.base) or None)
    assert second != first

    assert site.run("runner", "drain").returncode == 0
    assert runners(site.base) == []
    assert site.run("revive").stdout.strip() == "nothing to do"  # an operator drained it
    assert runners(site.base) == []
