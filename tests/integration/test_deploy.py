"""diff, deploy, releases and rollback against real supervisords."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import DEFAULT_PROGRAMS

pytestmark = pytest.mark.slow

BROKEN = """
[programs.broken]
instance = "alpha"
command = "sh -c 'exit 3'"
startsecs = 1
startretries = 0
"""


def pids(site) -> dict[str, int]:
    return {p["name"]: p["pid"] for i in site.status()[1]["instances"] for p in i["programs"]}


def deploy(site, *args: str):
    result = site.run("deploy", "--json", "--timeout", "60", *args)
    return result, json.loads(result.stdout)


def test_deploy_restarts_only_the_changed_program_and_diff_agrees(site_factory):
    site = site_factory()
    before = site.run("diff")
    assert before.returncode == 1
    assert "alpha: not running" in before.stdout
    result, first = deploy(site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert first["ok"]
    assert first["previous"] is None
    assert site.run("diff").returncode == 0
    started = pids(site)

    site.path.write_text(site.path.read_text().replace("--interval 0.5", "--interval 0.4"))
    changed = site.run("diff", "--json")
    assert changed.returncode == 1
    (beta,) = [i for i in json.loads(changed.stdout)["instances"] if i["instance"] == "beta"]
    assert beta["changes"]["programs"] == [
        {"program": "worker", "change": "changed", "keys": ["command"], "restarts": True}]
    result, second = deploy(site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert second["previous"] == first["release"]
    after = pids(site)
    assert after["web"] == started["web"]
    assert after["worker_00"] != started["worker_00"]
    assert site.run("diff").returncode == 0

    listing = json.loads(site.run("releases", "--json", check=True).stdout)
    assert listing["current"] == second["release"]
    assert listing["previous"] == first["release"]
    text = site.run("releases", check=True).stdout
    assert "current" in text
    assert "previous" in text

    back = site.run("rollback", check=True)
    assert f"rolled back to {first['release']}" in back.stdout
    assert pids(site)["web"] == started["web"]  # only the worker changed back
    assert site.run("diff").returncode == 1  # the checkout is newer than what runs


def test_a_deploy_that_cannot_start_a_program_rolls_back(site_factory):
    site = site_factory()
    result, first = deploy(site)
    assert result.returncode == 0, result.stdout + result.stderr
    running = pids(site)
    site.path.write_text(site.path.read_text() + BROKEN)
    result, failed = deploy(site)
    assert result.returncode == 1
    assert not failed["ok"]
    assert any("broken" in line for line in failed["failures"])
    assert failed["rolled_back_to"] == first["release"]
    assert failed["rollback"]["failures"] == []
    _, data = site.status()  # the checkout's view: its new program is not loaded
    states = {p["name"]: p["state"] for i in data["instances"] for p in i["programs"]}
    assert states.pop("broken") == "NOT LOADED"
    assert set(states.values()) == {"RUNNING"}
    assert {k: v for k, v in pids(site).items() if k != "broken"} == running  # never touched
    text = site.run("deploy")
    assert text.returncode == 1
    assert "rolled back to" in text.stderr
    assert "which runs again" in text.stderr
    listing = json.loads(site.run("releases", "--json", check=True).stdout)
    assert listing["current"] == first["release"]
    assert [r["failed"] != "" for r in listing["releases"]] == [False, True, True]


def test_a_second_deploy_waits_for_the_lock_and_names_its_holder(site_factory):
    import fcntl
    import os

    site = site_factory(DEFAULT_PROGRAMS)
    lock = site.state() / "locks" / "deploy-it-dev.lock"
    lock.parent.mkdir(parents=True)
    (lock.parent / "deploy-it-dev.lock.holder").write_text(
        json.dumps({"pid": 4242, "user": "ci", "since": 0}))
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = site.run("deploy", "--lock-timeout", "1")
    finally:
        os.close(fd)
    assert result.returncode == 1
    assert "waiting for the deploy lock" in result.stderr
    assert "held by pid 4242 of ci" in result.stderr


def test_a_changed_file_restarts_its_reader_and_a_rollback_brings_the_old_one_back(site_factory):
    site = site_factory(DEFAULT_PROGRAMS.replace('numprocs = 2', 'files = ["conf"]') + """
        [files.conf]
        template = "templates/app.conf.j2"
        path = "{state_dir}/app.conf"
        instance = "beta"
        """)
    root = site.base / "root"
    (root / "templates").mkdir(parents=True)
    template = root / "templates" / "app.conf.j2"
    template.write_text("level = debug\n")
    result, _ = deploy(site, "--root", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    started = pids(site)
    template.write_text("level = info\n")
    changed = site.run("diff", "--root", str(root))
    assert changed.returncode == 1
    assert "worker changed (file conf)" in changed.stdout
    result, _ = deploy(site, "--root", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site.state() / "app.conf").read_text() == "level = info\n"
    after = pids(site)
    assert after["web"] == started["web"]
    assert after["worker"] != started["worker"]
    assert site.run("diff", "--root", str(root)).returncode == 0
    site.run("rollback", "--root", str(root), check=True)
    assert (site.state() / "app.conf").read_text() == "level = debug\n"  # from the release
    assert pids(site)["web"] == started["web"]
