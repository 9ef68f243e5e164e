"""The quick status (``siteboot.quickstatus``, from the plan cache's digest) against real
supervisords: it prints exactly what the full status prints, and leaves to the full status
whatever is not plain."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers import status_code, status_verdict, supervisords, wait_until
from tests.integration.conftest import DEFAULT_PROGRAMS
from tests.integration.test_readiness import FAILING_WEB

pytestmark = pytest.mark.slow

def status(site: Any, *args: str, full: bool = False) -> tuple[int, str, bool]:
    """(exit code, output, whether the site model was loaded) of ``siteboot status ARGS``."""
    result = subprocess.run([sys.executable, "-c", status_code(args, full)], env=site.env,
                            capture_output=True, text=True, timeout=60, check=False)
    return status_verdict(result)


def timeless(output: str) -> str:
    """The output without what moves between two runs (uptimes, seconds ago)."""
    if output.startswith("{"):
        data = json.loads(output)
        for report in [data]:
            for inst in report["instances"]:
                for program in inst["programs"]:
                    program["uptime_s"] = None
                    program["backoff"] = None  # the healer's tries go on between two runs
                    if program["last_exit"]:
                        program["last_exit"]["ago_s"] = None
        return json.dumps(data, indent=1)
    return re.sub(r"\b\d+s\b", "Ns", output)


def same_as_full(site: Any, *args: str) -> tuple[int, str]:
    """``status ARGS`` answered quickly, and exactly as the full status answers it."""
    code, output, loaded = status(site, *args)
    assert not loaded, output
    full_code, full_output, full_loaded = status(site, *args, full=True)
    assert full_loaded
    assert (code, timeless(output)) == (full_code, timeless(full_output))
    return code, output


def started(site_factory: Any, programs: str | None = None) -> Any:
    site = site_factory() if programs is None else site_factory(programs)
    site.run("up", check=True)
    status(site)  # caches the plan
    return site


def test_a_running_site_is_answered_quickly_and_as_fully(site_factory):
    site = started(site_factory)
    site.wait_status(0)
    code, output = same_as_full(site)
    assert code == 0
    assert "worker_01" in output
    assert "web" in output
    code, output = same_as_full(site, "--json")
    data = json.loads(output)
    assert data["ok"]
    assert [i["name"] for i in data["instances"]] == ["alpha", "beta"]
    assert [p["name"] for p in data["instances"][1]["programs"]] == ["worker_00", "worker_01"]
    code, output = same_as_full(site, "-i", "beta", "--json")
    assert [i["name"] for i in json.loads(output)["instances"]] == ["beta"]


def test_an_operator_stop_is_no_alarm_in_the_quick_status_either(site_factory):
    site = started(site_factory)
    site.wait_status(0)
    site.run("stop", "web", check=True)
    code, output = same_as_full(site)
    assert code == 0
    assert re.search(r"web +STOPPED", output), output


FAILING = """
[programs.web]
instance = "alpha"
command = "{python} -c 'import sys; sys.exit(\\"no config at /etc/web.conf\\")'"
startsecs = 1
startretries = 0

[programs.worker]
instance = "beta"
command = "{python} -m siteboot.demo work --interval 0.5"
startsecs = 1
"""


def test_what_is_not_plain_is_left_to_the_full_status(site_factory):
    site = started(site_factory, FAILING)
    site.wait_status(2)
    code, output, loaded = status(site)
    assert loaded  # a FATAL process: its log tail is the full status's to add
    assert code == 2
    assert "no config at /etc/web.conf" in output, output
    site.wait_status(0, "-i", "beta")
    code, output, loaded = status(site, "-i", "beta")
    assert not loaded
    assert code == 0, output

    beta_pid = int(site.runtime("beta").joinpath("supervisord.pid").read_text())
    assert beta_pid in supervisords(site.base)
    os.kill(beta_pid, signal.SIGSTOP)  # hung: both wait for it once, and say so alike
    try:
        code, output = same_as_full(site, "-i", "beta")
    finally:
        os.kill(beta_pid, signal.SIGCONT)
    assert code == 2
    assert "did not answer in time" in output, output
    os.kill(beta_pid, signal.SIGKILL)
    wait_until(lambda: beta_pid not in supervisords(site.base))
    code, output = same_as_full(site, "-i", "beta")  # its socket file is left: nobody answers
    assert code == 2
    assert "nothing is listening" in output, output


def test_an_unknown_instance_is_the_full_status_s_error(site_factory):
    site = started(site_factory)
    code, _output, loaded = status(site, "-i", "gamma")
    assert loaded
    assert code == 3


def program(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for i in data["instances"] for p in i["programs"] if p["name"] == name)


def test_health_from_the_healer_s_records_is_in_the_quick_status_too(site_factory):
    site = site_factory(FAILING_WEB)
    site.run("up")  # exits 1: web is not ready

    def unhealthy() -> bool:
        code, output, _loaded = status(site, "--json")
        web = program(json.loads(output), "web")
        return (code, web["health"], web["health_detail"]) == (1, "not ready",
                                                               "HTTP 500 (want 200)")

    wait_until(unhealthy, timeout=60)
    # the healer may restart web between two runs: compare what it says of web's health
    code, output, loaded = status(site, "--json")
    assert not loaded
    full_code, full_output, _loaded = status(site, "--json", full=True)
    fields = ("health", "health_detail")
    assert [program(json.loads(output), "web")[f] for f in fields] == \
        [program(json.loads(full_output), "web")[f] for f in fields] == \
        ["not ready", "HTTP 500 (want 200)"]
    assert code == full_code == 1
    code, output, loaded = status(site)
    assert not loaded
    assert code == 1
    assert re.search(r"web\s+RUNNING\s+not ready", output), output


def test_an_instance_placed_on_another_host_is_listed_quickly_too(site_factory):
    site = started(site_factory, DEFAULT_PROGRAMS + """
[instances.gamma]
port = { dev = PORT_SPARE }
host = "elsewhere.example"
""")
    site.wait_status(0)
    code, output = same_as_full(site)
    assert code == 0
    assert "gamma (root) on elsewhere.example" in output, output
    code, output = same_as_full(site, "--json")
    gamma = json.loads(output)["instances"][2]
    assert (gamma["name"], gamma["state"], gamma["host"]) == ("gamma", "elsewhere",
                                                              "elsewhere.example")
