"""ci/siteboot.gitlab-ci.yml run by a real CI client: gitlab-ci-local with the shell executor.

A temporary site repository includes the template; its pipelines validate, deploy, deploy a
change (only that program restarts) and deploy a program that cannot start (rolled back).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, SITEBOOT, free_ports, kill_all, processes_under

pytestmark = pytest.mark.slow

GITLAB_CI_LOCAL = shutil.which("gitlab-ci-local")
if GITLAB_CI_LOCAL is None:
    WHY = "gitlab-ci-local is not installed (`npm install -g gitlab-ci-local@4.60.1`)"
    if os.environ.get("CI"):
        pytest.fail(f"{WHY}: .ci/run installs it", pytrace=False)
    pytest.skip(f"{WHY}; .ci/run installs it, and in CI its absence is a failure",
                allow_module_level=True)

# the CLI of the test venv, as a site's runner account would have it installed
SITEBOOT_BIN = str(Path(sys.executable).parent / "siteboot")


@dataclass
class SiteRepo:
    base: Path
    repo: Path
    env: dict[str, str]
    ports: dict[str, int]

    @property
    def site_file(self) -> Path:
        return self.repo / "sites" / "ci.toml"

    def write_site(self, programs: str) -> None:
        text = textwrap.dedent(f"""
            [site]
            name = "ci"
            envs = ["dev"]
            runtime_dir = "{self.base}/run"
            state_dir = "{self.base}/state"

            [instances.main]
            port = {{ dev = {self.ports['main']} }}
            """) + textwrap.dedent(programs).replace("PORT_WEB", str(self.ports["web"]))
        self.site_file.write_text(text)

    def commit(self, message: str) -> None:
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-qm", message)

    def pipeline(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert GITLAB_CI_LOCAL is not None
        cmd = [GITLAB_CI_LOCAL, "--max-job-name-padding", "0",
               "--variable", f"SITEBOOT={SITEBOOT_BIN}", "--variable", "SITEBOOT_ENVS=dev",
               "--variable", "SITEBOOT_SITE=ci", "--variable", "SITEBOOT_RUNNER_TAG=local",
               "--variable", "SITEBOOT_TIMEOUT=60", *args]
        result = subprocess.run(cmd, env=self.env, cwd=self.repo, capture_output=True, text=True,
                                timeout=600, check=False)
        print(result.stdout, result.stderr)  # shown when a test fails
        return result

    def siteboot(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*SITEBOOT, *args, "--site", str(self.site_file)], env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.siteboot("status", "--json").stdout)
        return data

    def pids(self) -> dict[str, int]:
        return {p["name"]: p["pid"] for i in self.status()["instances"] for p in i["programs"]}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=ci", "-c", "user.email=ci@localhost",
                    *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def site_repo() -> Iterator[SiteRepo]:
    """A git repository (branch dev) holding a site and including ci/siteboot.gitlab-ci.yml."""
    base = Path(tempfile.mkdtemp(prefix="sb-", dir="/tmp"))
    repo = base / "repo"
    (repo / "sites").mkdir(parents=True)
    (repo / "ci").mkdir()
    shutil.copy(REPO / "ci" / "siteboot.gitlab-ci.yml", repo / "ci")
    (repo / ".gitlab-ci.yml").write_text("include:\n  - local: ci/siteboot.gitlab-ci.yml\n")
    (repo / ".gitignore").write_text(".gitlab-ci-local/\n")
    main, web = free_ports(2)
    env = dict(os.environ, HOME=str(base / "home"), NO_COLOR="1")
    for name in ("SITEBOOT_SITE", "SITEBOOT_ENV", "SITEBOOT_ROOT", "SITEBOOT_DEBUG"):
        env.pop(name, None)
    site = SiteRepo(base, repo, env, {"main": main, "web": web})
    git(repo, "init", "-q", "-b", "dev")
    try:
        yield site
    finally:
        said = ""
        if site.site_file.exists():
            downed = site.siteboot("down")
            said = f"`down` exited {downed.returncode}: {downed.stdout}{downed.stderr}"
        leftovers = processes_under(base)
        kill_all(leftovers)
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers, f"processes left running under {base}: {leftovers}; {said}"


PROGRAMS = """
[programs.web]
instance = "main"
command = "{python} -m siteboot.demo serve --port {port}"
port = { dev = PORT_WEB }
startsecs = 1

[programs.worker]
instance = "main"
command = "{python} -m siteboot.demo work --interval 0.5"
startsecs = 1
"""

BROKEN = """
[programs.broken]
instance = "main"
command = "sh -c 'exit 3'"
startsecs = 1
startretries = 0
"""


def test_validate_fails_on_a_clashing_port(site_repo):
    site_repo.write_site(PROGRAMS + """
        [programs.twin]
        instance = "main"
        command = "{python} -m siteboot.demo serve --port {port}"
        port = { dev = PORT_WEB }
        """)
    site_repo.commit("twin on web's port")
    result = site_repo.pipeline()
    assert result.returncode != 0
    assert f"port {site_repo.ports['web']} is used by both" in result.stdout
    assert "siteboot-deploy-dev" not in result.stdout.split("FAIL")[-1]  # never reached
    assert not (site_repo.base / "run").exists()


def test_deploys_change_only_what_changed_and_roll_back_what_cannot_start(site_repo):
    site_repo.write_site(PROGRAMS)
    site_repo.commit("first")
    result = site_repo.pipeline()
    assert result.returncode == 0
    assert "PASS  siteboot-validate" in result.stdout
    assert "PASS  siteboot-deploy-dev" in result.stdout
    status = site_repo.status()
    assert status["ok"], status
    artifact = site_repo.repo / "siteboot-status-dev.json"
    assert json.loads(artifact.read_text())["ok"] is True
    first = site_repo.pids()

    site_repo.write_site(PROGRAMS.replace("--interval 0.5", "--interval 0.4"))
    site_repo.commit("a faster worker")
    result = site_repo.pipeline("siteboot-deploy-dev")
    assert result.returncode == 0
    assert "restarted worker (command)" in result.stdout
    second = site_repo.pids()
    assert second["web"] == first["web"]
    assert second["worker"] != first["worker"]

    site_repo.write_site(PROGRAMS.replace("--interval 0.5", "--interval 0.4") + BROKEN)
    site_repo.commit("a program that cannot start")
    result = site_repo.pipeline("siteboot-deploy-dev")
    assert result.returncode != 0
    assert "FAIL  siteboot-deploy-dev" in result.stdout
    assert "broken" in result.stdout
    assert "rolled back to" in result.stdout
    assert site_repo.pids() == {**second, "broken": None}  # the previous release runs again
    releases = json.loads(site_repo.siteboot("releases", "--json").stdout)
    assert [bool(r["failed"]) for r in releases["releases"]] == [False, False, True]
    assert releases["current"] == releases["releases"][1]["id"]


def jobs(repo: Path, *args: str) -> dict[str, tuple[str, bool]]:
    """job -> (when, allow_failure) as gitlab-ci-local evaluates the rules."""
    assert GITLAB_CI_LOCAL is not None
    result = subprocess.run([GITLAB_CI_LOCAL, "--list-json", *args], cwd=repo, capture_output=True,
                            text=True, timeout=120, check=True)
    lines = result.stdout.splitlines()  # notes and warnings may come first
    listing = json.loads("\n".join(lines[lines.index("["):]))
    return {job["name"]: (job["when"], job["allow_failure"]) for job in listing}


def test_the_projects_own_pipeline_includes_the_template_with_rules_per_branch(tmp_path):
    repo = tmp_path / "repo"
    (repo / "ci").mkdir(parents=True)
    shutil.copy(REPO / ".gitlab-ci.yml", repo)
    shutil.copy(REPO / "ci" / "siteboot.gitlab-ci.yml", repo / "ci")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")
    on_main = jobs(repo)
    assert on_main["siteboot-validate"] == ("on_success", False)
    assert on_main["siteboot-deploy-prod"] == ("manual", False)  # prod: by hand
    assert on_main["siteboot-rollback-prod"] == ("manual", True)
    assert on_main["siteboot-deploy-dev"][0] == on_main["siteboot-revive"][0] == "never"
    git(repo, "checkout", "-q", "-b", "dev")
    on_dev = jobs(repo)
    assert on_dev["siteboot-deploy-dev"] == ("on_success", False)
    assert on_dev["siteboot-deploy-prod"][0] == "never"
    scheduled = jobs(repo, "--variable", "CI_PIPELINE_SOURCE=schedule")
    assert [name for name, (when, _) in scheduled.items() if when != "never"] == ["siteboot-revive"]
    assert GITLAB_CI_LOCAL is not None
    preview = subprocess.run([GITLAB_CI_LOCAL, "--preview"], cwd=repo, capture_output=True,
                             text=True, timeout=120, check=True).stdout
    assert "SITEBOOT_SITE: local" in preview
    assert 'export SITEBOOT="$tool/bin/siteboot"' in preview  # the override reached every job


# ------------------------------------------------------------------------------------------
# One CI account deploys both instances: the pipeline runs as the member of a deploy grant


GRANT_OWNER, GRANT_CI, GRANT_GROUP = "sbt_dglown", "sbt_dglci", "sbt_dglgrp"

def _as(user: str, *cmd: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    import pwd

    home = pwd.getpwnam(user).pw_dir
    result = subprocess.run(["runuser", "-u", user, "--", "env", f"HOME={home}", "NO_COLOR=1",
                             f"PATH={os.environ['PATH']}", *cmd], cwd=cwd, capture_output=True,
                            text=True, timeout=600, check=False)
    print(user, cmd, result.returncode, result.stdout, result.stderr)  # shown when a test fails
    return result


@pytest.mark.users
def test_the_ci_account_deploys_the_granted_instance_of_another_account():
    import psutil

    from tests.helpers import (
        CHANGING_COMMAND,
        SYSTEM_PYTHON,
        deploy_grant_site,
        drop_accounts,
        install_for_all,
        make_accounts,
    )

    if os.geteuid() != 0 or not shutil.which("useradd") or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("needs root, useradd and /usr/bin/python3")
    drop_accounts([GRANT_OWNER, GRANT_CI], [GRANT_GROUP])
    base = Path(tempfile.mkdtemp(prefix="sbl-", dir="/tmp"))
    os.chmod(base, 0o755)
    siteboot: list[str] = []
    try:
        make_accounts(GRANT_GROUP, [GRANT_OWNER, GRANT_CI])
        python = install_for_all(base)
        siteboot = [str(python), "-m", "siteboot"]
        for shared in ("run", "shared"):
            (base / shared).mkdir()
            os.chmod(base / shared, 0o1777)
        svc, app = free_ports(2)
        text = deploy_grant_site("ci", base, f"{base}/run/{{user}}", GRANT_OWNER, GRANT_CI,
                                 GRANT_GROUP, [svc, app])
        owner_root, repo = base / "owner", base / "repo"
        for root in (owner_root, repo):
            (root / "sites").mkdir(parents=True)
            (root / "sites" / "ci.toml").write_text(text)
        (repo / "ci").mkdir()
        shutil.copy(REPO / "ci" / "siteboot.gitlab-ci.yml", repo / "ci")
        (repo / ".gitlab-ci.yml").write_text("include:\n  - local: ci/siteboot.gitlab-ci.yml\n")
        (repo / ".gitignore").write_text(".gitlab-ci-local/\n")
        subprocess.run(["chown", "-R", GRANT_OWNER, str(owner_root)], check=True)
        subprocess.run(["chown", "-R", GRANT_CI, str(repo)], check=True)

        def owner(*args: str) -> subprocess.CompletedProcess[str]:
            return _as(GRANT_OWNER, *siteboot, *args, "--root", str(owner_root), cwd=owner_root)

        def ci_git(*args: str) -> None:
            done = _as(GRANT_CI, "git", "-c", "user.name=ci", "-c", "user.email=ci@localhost",
                       *args, cwd=repo)
            assert done.returncode == 0

        def pids() -> dict[str, Any]:
            data = json.loads(owner("status", "--json").stdout)
            return {p["name"]: p["pid"] for i in data["instances"] for p in i["programs"]}

        assert owner("up").returncode == 0
        ci_git("init", "-q", "-b", "dev")
        ci_git("add", "-A")
        ci_git("commit", "-qm", "first")
        before = pids()
        assert before["siteboot-deploy-agent"]

        site_file = repo / "sites" / "ci.toml"
        site_file.write_text(text.replace(CHANGING_COMMAND + "1", CHANGING_COMMAND + "0.6"))
        ci_git("commit", "-qam", "a faster worker in the granted instance")
        assert GITLAB_CI_LOCAL is not None
        result = _as(GRANT_CI, GITLAB_CI_LOCAL, "--max-job-name-padding", "0",
                     "--variable", f"SITEBOOT={' '.join(siteboot)}",
                     "--variable", "SITEBOOT_ENVS=dev", "--variable", "SITEBOOT_SITE=ci",
                     "--variable", "SITEBOOT_RUNNER_TAG=local", "--variable",
                     "SITEBOOT_TIMEOUT=60", "siteboot-deploy-dev", cwd=repo)
        assert result.returncode == 0
        assert "PASS  siteboot-deploy-dev" in result.stdout
        assert "app (owned by sbt_dglown, through its deploy agent): deployed" in result.stdout
        after = pids()
        assert after["steady"] == before["steady"]
        assert after["changing"] != before["changing"]
        changed = psutil.Process(after["changing"])
        assert "0.6" in changed.cmdline()
        assert changed.username() == GRANT_OWNER
    finally:
        if siteboot:
            _as(GRANT_OWNER, *siteboot, "down", "--site", str(base / "owner/sites/ci.toml"),
                cwd=base)
            _as(GRANT_CI, *siteboot, "down", "--site", str(base / "repo/sites/ci.toml"),
                cwd=base)
        leftovers = processes_under(base)
        kill_all(leftovers)
        drop_accounts([GRANT_OWNER, GRANT_CI], [GRANT_GROUP])
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers, f"processes left running under {base}: {leftovers}"
