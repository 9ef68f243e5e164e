"""`siteboot runner ...` through click: exit codes and messages (no runner is started here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result

from tests.helpers import MINIMAL_SITE, STAND_IN_RUNNER, invoke_cli, runner_site_text


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SITEBOOT_SITE", "SITEBOOT_ENV", "SITEBOOT_ROOT", "SITEBOOT_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


def run(*args: object) -> Result:
    result: Result = invoke_cli(*args)
    return result


def runner_site(short_dir: Path, runner: str, user: str = "") -> Path:
    path = short_dir / "r.toml"
    path.write_text(runner_site_text(short_dir, f"""
        instance = "main"
        executable = "{STAND_IN_RUNNER}"
        config = "{short_dir}/config.toml"
        {runner}
        """, instance=user))
    return path


def test_the_group_lists_its_commands():
    result = run("runner", "--help")
    assert result.exit_code == 0
    for command in ("status", "revive", "drain", "stop"):
        assert command in result.stdout


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["revive"], ["drain"], ["stop"]])
def test_a_site_without_runner_is_exit_2(tmp_path: Path, command: list[str]):
    site = tmp_path / "t.toml"
    site.write_text(MINIMAL_SITE)
    result = run("runner", *command, "--site", site)
    assert result.exit_code == 2
    assert "site t declares no [runner]" in result.stderr


def test_a_bad_site_file_is_unknown_to_status(tmp_path: Path):
    site = tmp_path / "t.toml"
    site.write_text(MINIMAL_SITE + '\n[runner]\ninstance = "nope"\n')
    result = run("runner", "status", "--site", site)
    assert result.exit_code == 3
    assert "instance 'nope' is not declared" in result.stderr
    assert run("runner", "revive", "--site", site).exit_code == 2


def test_status_of_a_detached_runner_that_does_not_run(short_dir: Path):
    site = runner_site(short_dir, 'mode = "detached"')
    result = run("runner", "status", "--site", site, "--json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["state"] == "not running"
    assert data["mode"] == "detached"
    assert data["config"] == f"{short_dir}/config.toml"
    assert data["log"] == f"{short_dir}/state/gitlab-runner.log"
    assert data["ok"] is False
    text = run("runner", "status", "--site", site)
    assert text.exit_code == 2
    assert "gitlab-runner (detached, instance main, user " in text.stdout
    assert "not running" in text.stdout


def test_status_of_a_supervised_runner_whose_instance_is_down(short_dir: Path):
    result = run("runner", "status", "--site", runner_site(short_dir, ""), "--json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert (data["state"], data["instance_state"]) == ("not running", "not running")
    assert data["detail"].startswith("instance main is not running")


@pytest.mark.parametrize("command", ["revive", "drain", "stop"])
def test_only_the_runners_account_acts_on_it(short_dir: Path, command: str):
    site = runner_site(short_dir, 'mode = "detached"', user='user = "nobody"')
    result = run("runner", command, "--site", site)
    assert result.exit_code == 1
    assert "is owned by nobody: run as nobody" in result.stderr
    status = run("runner", "status", "--site", site)
    assert status.exit_code == 3
    assert "not yours" in status.stdout


def test_a_supervised_drain_takes_no_timeout(short_dir: Path):
    result = run("runner", "drain", "--timeout", "5", "--site", runner_site(short_dir, ""))
    assert result.exit_code == 2
    assert "stopwaitsecs" in result.stderr


def test_revive_reports_a_missing_config(short_dir: Path):
    result = run("runner", "revive", "--site", runner_site(short_dir, 'mode = "detached"'), "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["action"] == "failed"
    assert "register the runner first" in data["detail"]
