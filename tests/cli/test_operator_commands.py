"""Issue 9 through the CLI: hints that work when pasted, names as status prints them, status
narrowed to programs and envs, completion, previews of several envs, closed pipes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from siteboot.cli.commands import cli
from tests.helpers import REPO, invoke_cli, own_site_text, run_unread


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("SITEBOOT_SITE", "SITEBOOT_ENV", "SITEBOOT_ROOT", "SITEBOOT_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def two_instances(short_dir: Path) -> Path:
    """A site of the invoker's (nothing running): main (web) and jobs (worker, numprocs 2)."""
    path = short_dir / "myapp.toml"
    path.write_text(textwrap.dedent(own_site_text(short_dir, extra="""
        [instances.jobs]
        port = { dev = 40011, staging = 40012, prod = 40013 }

        [programs.worker]
        instance = "jobs"
        command = "sleep 100"
        numprocs = 2
        """)))
    return path


# --------------------------------------------------------------------------------------------
# Hints (item 6)


def test_the_hint_of_status_carries_site_env_and_instance(short_dir):
    site = two_instances(short_dir)
    result = invoke_cli("status", "--site", site, "-e", "prod", "-i", "jobs")
    assert result.exit_code == 2
    assert f"run `siteboot up --site {site} -e prod -i jobs`" in result.stdout
    assert "main" not in result.stdout


def test_a_never_started_env_is_not_running_with_the_up_to_run(short_dir):
    site = two_instances(short_dir)
    result = invoke_cli("start", "--site", site, "--env", "staging", "worker_01")
    assert result.exit_code == 1
    assert "jobs:worker_01: instance jobs is not running: it was never started in env " \
           f"staging (no key yet at {short_dir}/st/t-staging/keys/jobs.key); start it: " \
           f"`siteboot up --site {site} -e staging`" in result.stdout
    tail = invoke_cli("tail", "--site", site, "-e", "staging", "web")
    assert tail.exit_code == 1
    assert f"hint: start it: `siteboot up --site {site} -e staging`" in tail.stderr


def test_the_environment_counts_as_given(short_dir, monkeypatch):
    site = two_instances(short_dir)
    monkeypatch.setenv("SITEBOOT_SITE", str(site))
    result = invoke_cli("status", "-i", "main")
    assert f"run `siteboot up --site {site} -i main`" in result.stdout


# --------------------------------------------------------------------------------------------
# status: header, NAME..., -i repeated, --all-envs


def test_status_header_names_site_and_env(short_dir):
    result = invoke_cli("status", "--site", two_instances(short_dir), "-e", "staging")
    assert result.stdout.splitlines()[0] == "site t, env staging"


def test_status_of_several_instances_and_of_names(short_dir):
    site = two_instances(short_dir)
    both = invoke_cli("status", "--site", site, "-i", "jobs", "-i", "main", "--json")
    assert [i["name"] for i in json.loads(both.stdout)["instances"]] == ["main", "jobs"]
    named = invoke_cli("status", "--site", site, "worker_01", "--json")
    assert [i["name"] for i in json.loads(named.stdout)["instances"]] == ["jobs"]
    unknown = invoke_cli("status", "--site", site, "wrker")
    assert unknown.exit_code == 3
    assert "no program 'wrker' in site t (did you mean 'worker'?)" in unknown.stderr


def test_status_of_all_envs_when_none_is_in_use(short_dir):
    site = two_instances(short_dir)
    result = invoke_cli("status", "--site", site, "-e", "prod", "--all-envs", "--json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert (data["site"], data["ok"], [e["env"] for e in data["envs"]]) == ("t", False, ["prod"])
    table = invoke_cli("status", "--site", site, "--all-envs")
    assert table.stdout.splitlines()[0] == "site t, env dev"


def test_every_command_with_instances_takes_several(short_dir, tmp_path):
    site = two_instances(short_dir)
    for command in ("up", "down", "status", "render", "rotate-key"):
        option = next(p for p in cli.commands[command].params if p.name == "instance")
        assert getattr(option, "multiple", False), command
    result = invoke_cli("render", "--site", site, "-i", "main", "-i", "jobs", "--out",
                        tmp_path / "out", "--json")
    assert [r["instance"] for r in json.loads(result.stdout)["rendered"]] == ["main", "jobs"]


def test_previews_of_several_envs_share_a_folder(short_dir, tmp_path):
    site = two_instances(short_dir)
    for env in ("dev", "prod"):
        assert invoke_cli("render", "--site", site, "-e", env, "--out", tmp_path / "out").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "supervisord-t-jobs-dev.conf", "supervisord-t-jobs-prod.conf",
        "supervisord-t-main-dev.conf", "supervisord-t-main-prod.conf"]


# --------------------------------------------------------------------------------------------
# Shell completion


def complete(*words: str) -> list[str]:
    """What bash completion offers for the last of ``words`` (click's bash_complete protocol)."""
    line = ["siteboot", *words]
    result = CliRunner().invoke(cli, [], prog_name="siteboot", env={
        "_SITEBOOT_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(line),
        "COMP_CWORD": str(len(line) - 1)})
    return [item.partition(",")[2] for item in result.output.splitlines() if item]


def test_completion_of_programs_instances_envs_and_sites(short_dir):
    site = str(two_instances(short_dir))
    assert complete("stop", "--site", site, "w") == ["web", "worker", "worker_00", "worker_01"]
    assert complete("status", "--site", site, "jobs:") == [
        "jobs:*", "jobs:worker_00", "jobs:worker_01"]
    assert complete("up", "--site", site, "-i", "") == ["main", "jobs"]
    assert complete("ctl", "--site", site, "-i", "j") == ["jobs"]
    assert complete("status", "--site", site, "-e", "") == ["dev", "staging", "prod"]
    assert complete("tail", "--root", str(REPO), "--site", "jaws", "jaws-site-") == [
        "jaws-site-daemon", "jaws-site-jtm-rpc", "jaws-site-central-rpc"]
    assert "local" in complete("up", "--root", str(REPO), "--site", "")
    assert complete("stop", "--site", str(short_dir / "nope.toml"), "") == []


# --------------------------------------------------------------------------------------------
# A reader that goes away (item 5): real pipes, closed before siteboot writes


def test_status_keeps_its_verdict_when_nobody_reads(short_dir):
    site = two_instances(short_dir)
    result = run_unread("status", "--site", site)
    assert (result.returncode, result.stderr) == (2, "")
    result = run_unread("status", "--site", site, "--all-envs", "--json")
    assert (result.returncode, result.stderr) == (2, "")
    # no verdict (no such site), and its error cannot be written either: still "unknown"
    assert run_unread("status", "--site", short_dir / "no.toml",
                              stderr_too=True).returncode == 3


@pytest.mark.parametrize("args", [["ports", "--root", REPO, "--site", "jaws"], ["--help"],
                                  ["status", "--help"], ["--version"]])
def test_other_commands_exit_141_quietly(args):
    result = run_unread(*args)
    assert (result.returncode, result.stderr) == (141, "")


def test_a_click_command_that_printed_before_the_reader_went(short_dir, monkeypatch):
    """In process: the same translation as `main` (click's own would be exit 1)."""
    def closed(*args: Any, **kwargs: Any) -> None:
        raise BrokenPipeError

    monkeypatch.setattr("siteboot.cli.commands.echo", closed)
    monkeypatch.setattr("siteboot.cli.commands.silence_output", lambda: None)
    monkeypatch.setattr("siteboot.errors.silence_output", lambda: None)
    result: Result = CliRunner(mix_stderr=False).invoke(cli, ["ports", "--root", str(REPO)])
    assert (result.exit_code, result.stderr) == (141, "")
