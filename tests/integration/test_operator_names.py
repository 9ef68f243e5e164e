"""Against a real supervisord: the names `status` prints work everywhere (issue 9, item 7), an
operator's stop reads STOPPED (no "exit -1"), and a reader that goes away leaves status its
verdict (item 5)."""

from __future__ import annotations

import pytest

from tests.helpers import run_unread


def row(table: str, process: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if line.split()[:1] == [process])


@pytest.mark.slow
def test_names_as_printed_and_a_closed_pipe(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)

    # the name the table prints, alone
    site.run("stop", "worker_01", check=True)
    code, data = site.status()
    assert code == 0, data  # an operator's stop is not counted
    worker = next(p for p in data["instances"][1]["programs"] if p["name"] == "worker_01")
    assert (worker["state"], worker["exitstatus"]) == ("STOPPED", None)
    table = site.run("status", "worker_01")
    assert table.returncode == 0
    assert row(table.stdout, "worker_01") == ["worker_01", "STOPPED", "0"]  # pid -, restarts 0
    assert "worker_00" not in table.stdout
    assert table.stdout.splitlines()[0] == "site it, env dev"

    # supervisord's own name, and an instance by the name of its header
    site.run("start", f"{worker['group']}:worker_01", check=True)
    restarted = site.run("restart", "beta", check=True)
    assert "beta:worker_00: restarted" in restarted.stdout
    assert "beta:worker_01: restarted" in restarted.stdout

    # ctl: the short name is qualified for supervisorctl
    stopped = site.run("ctl", "-i", "beta", "--", "stop", "worker_00", check=True)
    assert f"{worker['group']}:worker_00: stopped" in stopped.stdout
    assert site.status()[0] == 2  # stopped behind siteboot's back: it counts
    site.run("start", "worker_00", check=True)
    site.wait_status(0)

    # `siteboot status | head -1` once head has gone: quiet, and the verdict stands
    unread = run_unread("status", env=site.env)
    assert (unread.returncode, unread.stderr) == (0, "")
    unread = run_unread("status", "--json", env=site.env, stderr_too=True)
    assert unread.returncode == 0
    assert run_unread("ports", env=site.env).returncode == 141
