"""A deploy grant with real accounts: `sbt_dgown` runs instance `app`, which grants deploy to
group `sbt_dggrp`; `sbt_dgci` (the CI account, a member) deploys a change of one of app's
programs from its own checkout through app's deploy agent. `sbt_dgout` is in no group.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import (
    CHANGING_COMMAND,
    SYSTEM_PYTHON,
    deploy_grant_site,
    drop_accounts,
    free_ports,
    install_for_all,
    kill_all,
    make_accounts,
    processes_under,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.users]

OWNER, MEMBER, OUTSIDER, GROUP = "sbt_dgown", "sbt_dgci", "sbt_dgout", "sbt_dggrp"


@dataclass
class Grant:
    base: Path
    python: Path
    ports: dict[str, int]

    def root(self, user: str) -> Path:
        """``user``'s checkout of the site (a site root of its own)."""
        return self.base / f"root-{user}"

    def site_file(self, user: str) -> Path:
        return self.root(user) / "sites" / "dg.toml"

    def write_site(self, user: str, text: str) -> None:
        path = self.site_file(user)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        subprocess.run(["chown", "-R", user, str(self.root(user))], check=True)

    def run(self, user: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        home = pwd.getpwnam(user).pw_dir
        cmd = ["runuser", "-u", user, "--", "env", f"HOME={home}", "NO_COLOR=1",
               str(self.python), "-c", "from siteboot.cli import main; main()", *args,
               "--root", str(self.root(user)), "--site", str(self.site_file(user))]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=str(self.base),
                                timeout=timeout, check=False)
        print(user, args, result.returncode, result.stdout, result.stderr)  # shown on failure
        return result

    def programs(self, user: str = OWNER) -> dict[str, dict[str, Any]]:
        data = json.loads(self.run(user, "status", "--json").stdout)
        return {p["name"]: p for i in data["instances"] for p in i["programs"]}

    def pids(self) -> dict[str, int]:
        return {name: p["pid"] for name, p in self.programs().items()}

    @property
    def requests_dir(self) -> Path:
        return self.base / "shared" / OWNER / "app.requests"

    def agent_log(self) -> str:
        log = self.base / "tmp/dg-run/app/logs/siteboot-deploy-agent.err.log"
        return log.read_text() if log.exists() else ""


@pytest.fixture(scope="module")
def grant() -> Iterator[Grant]:
    if os.geteuid() != 0 or not shutil.which("useradd") or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("needs root, useradd and /usr/bin/python3")
    drop_accounts([OWNER, MEMBER, OUTSIDER], [GROUP])
    base = Path(tempfile.mkdtemp(prefix="sbg-", dir="/tmp"))
    os.chmod(base, 0o755)
    env = None
    try:
        make_accounts(GROUP, [OWNER, MEMBER], [OUTSIDER])
        python = install_for_all(base)
        (base / "tmp").mkdir()
        os.chmod(base / "tmp", 0o1777)
        (base / "tmp" / "dg-run").mkdir()
        os.chmod(base / "tmp" / "dg-run", 0o1777)
        (base / "shared").mkdir()
        os.chmod(base / "shared", 0o1777)
        svc, app = free_ports(2)
        env = Grant(base, python, {"svc": svc, "app": app})
        text = deploy_grant_site("dg", base, f"{base}/tmp/dg-run", OWNER, MEMBER, GROUP,
                                 [svc, app])
        for user in (OWNER, MEMBER):
            env.write_site(user, text)
        yield env
    finally:
        if env is not None:
            for user in (OWNER, MEMBER):
                env.run(user, "down")
        leftovers = processes_under(base)
        kill_all(leftovers)
        drop_accounts([OWNER, MEMBER, OUTSIDER], [GROUP])
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers, f"processes left running: {leftovers}"


def _wait(predicate: Any) -> Any:
    return wait_until(predicate, timeout=120.0)  # a loaded machine: generous


def _agent_running(env: Grant) -> bool:
    agent = env.programs().get("siteboot-deploy-agent")
    return agent is not None and agent["state"] == "RUNNING"


def test_a_member_deploys_a_program_change_through_the_owners_agent(grant):
    env = grant
    assert env.run(OWNER, "up").returncode == 0
    assert env.run(MEMBER, "up").returncode == 0
    info = os.lstat(env.requests_dir)
    assert pwd.getpwuid(info.st_uid).pw_name == OWNER
    assert grp.getgrgid(info.st_gid).gr_name == GROUP
    assert info.st_mode & 0o7777 == 0o3770
    _wait(lambda: _agent_running(env))
    before = env.pids()

    changed = env.site_file(MEMBER).read_text().replace(CHANGING_COMMAND + "1",
                                                        CHANGING_COMMAND + "0.7")
    assert "--interval 0.7" in changed
    env.write_site(MEMBER, changed)
    result = env.run(MEMBER, "deploy", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    [request] = data["requests"]
    assert request["instance"] == "app"
    assert request["state"] == "deployed", request
    assert any("changing" in line for line in request["restarted"]), request

    after = env.pids()
    assert after["steady"] == before["steady"]
    assert after["changing"] != before["changing"]
    proc = psutil.Process(after["changing"])
    assert "0.7" in proc.cmdline()
    assert proc.username() == OWNER
    supervisord = int((env.base / "tmp/dg-run/app/supervisord.pid").read_text())
    assert psutil.Process(supervisord).username() == OWNER
    # the release is the owner's, and names the member
    releases = json.loads(env.run(OWNER, "releases", "--json").stdout)["releases"]
    assert releases[-1]["requester"] == MEMBER
    assert f"from {MEMBER}: deployed" in env.agent_log()
    # the member reads the agent's log too (tailing a process is part of the control grant)
    home = pwd.getpwnam(MEMBER).pw_dir
    tail = subprocess.run(
        ["runuser", "-u", MEMBER, "--", "env", f"HOME={home}", str(env.python), "-c",
         "from siteboot.cli import main; main()", "ctl", "--site", str(env.site_file(MEMBER)),
         "-i", "app", "tail", "siteboot-deploy-agent", "stderr"],
        capture_output=True, text=True, timeout=120, check=False, cwd=str(env.base))
    assert f"from {MEMBER}: deployed" in tail.stdout, tail.stdout + tail.stderr
    # the request is gone; its answer stays, the owner's and readable by the group only
    names = os.listdir(env.requests_dir)
    assert [n for n in names if not n.endswith(".result.json")] == [], names
    result_file = env.requests_dir / next(n for n in names if n.endswith(".result.json"))
    assert os.stat(result_file).st_mode & 0o777 == 0o640


def test_a_members_port_change_is_refused_and_changes_nothing(grant):
    env = grant
    _wait(lambda: _agent_running(env))
    before = env.pids()
    text = env.site_file(MEMBER).read_text()
    moved = text.replace(f"port = {{ dev = {env.ports['app']} }}",
                         f"port = {{ dev = {free_ports(1)[0]} }}")
    assert moved != text
    env.write_site(MEMBER, moved.replace("--interval 0.7", "--interval 0.6"))
    # the member's own siteboot finds no agent at the new port: nothing is requested
    result = env.run(MEMBER, "deploy")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "app (owned by sbt_dgown, through its deploy agent): not requested" in result.stdout
    # a request made all the same (what another siteboot could leave) is refused by the agent
    code = textwrap.dedent(f"""
        from pathlib import Path
        from siteboot.deployrequest import submit
        from siteboot.plan import make_plan
        from siteboot.site import load_site
        plan = make_plan(load_site(Path({str(env.site_file(MEMBER))!r})), "dev")
        print(submit(plan, plan.instance("app"), Path({str(env.root(MEMBER))!r}), "deploy", None))
        """)
    made = subprocess.run(["runuser", "-u", MEMBER, "--", str(env.python), "-c", code],
                          capture_output=True, text=True, timeout=60, check=True)
    answer = env.requests_dir / (made.stdout.strip() + ".result.json")
    _wait(answer.exists)
    data = json.loads(answer.read_text())
    env.write_site(MEMBER, text)
    assert data["state"] == "refused", data
    assert "changes the instance's port" in data["detail"], data
    assert f"{OWNER} runs `siteboot up`" in data["detail"]
    assert env.pids() == before


def _plant(env: Grant, name: str, owner: str, build: Any) -> Path:
    """A request dir made as root for ``owner`` (what that account could make), complete."""
    partial = env.requests_dir / f"{name}.partial"
    partial.mkdir()
    build(partial)
    subprocess.run(["chown", "-R", f"{owner}:{GROUP}", str(partial)], check=True)
    final = env.requests_dir / name
    os.rename(partial, final)
    return final


def _request_json(folder: Path) -> None:
    (folder / "request.json").write_text(json.dumps(
        {"action": "deploy", "site": "dg", "env": "dev", "instance": "app"}))
    (folder / "root" / "sites").mkdir(parents=True)


def test_planted_requests_are_refused(grant):
    env = grant
    _wait(lambda: _agent_running(env))
    before = env.pids()
    site_text = env.site_file(MEMBER).read_text().replace("--interval 1", "--interval 0.3")

    def with_site(folder: Path) -> None:
        _request_json(folder)
        (folder / "root/sites/dg.toml").write_text(site_text)

    def with_key_link(folder: Path) -> None:
        _request_json(folder)
        key = Path(pwd.getpwnam(OWNER).pw_dir) / ".local/state/siteboot/dg-dev/keys/app.key"
        (folder / "root/sites/dg.toml").symlink_to(key)

    outsider = _plant(env, "20990101T000000Z-out-1", OUTSIDER, with_site)
    linked = _plant(env, "20990101T000000Z-lnk-1", MEMBER, with_key_link)
    for planted in (outsider, linked):
        answer = planted.with_name(planted.name + ".result.json")
        _wait(lambda answer=answer: answer.exists())
        data = json.loads(answer.read_text())
        assert data["state"] == "refused", data
    # the agent writes its child's lines to its log once the child exited, which is after
    # the child wrote the answer
    for line in ("who is not a member of the group", "is a symlink"):
        _wait(lambda line=line: line in env.agent_log())
    assert env.pids() == before


def _member_deploy(env: Grant, interval: str, startsecs: int) -> subprocess.Popen[str]:
    """The member deploys a change of `changing` that takes ``startsecs`` to settle."""
    text = env.site_file(MEMBER).read_text()
    start = text.index("[programs.changing]")
    changed = text[:start] + textwrap.dedent(f"""\
        [programs.changing]
        instance = "app"
        command = "{{python}} -m siteboot.demo work --interval {interval}"
        startsecs = {startsecs}
        """)
    env.write_site(MEMBER, changed)
    home = pwd.getpwnam(MEMBER).pw_dir
    return subprocess.Popen(
        ["runuser", "-u", MEMBER, "--", "env", f"HOME={home}", "NO_COLOR=1", str(env.python),
         "-c", "from siteboot.cli import main; main()", "deploy", "--json",
         "--root", str(env.root(MEMBER)), "--site", str(env.site_file(MEMBER))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(env.base))


def _agent_processes(env: Grant, child: bool) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "siteboot.agent" in cmdline and str(env.base) in " ".join(cmdline) \
                and ("--one" in cmdline) == child:
            found.append(proc)
    return found


def test_an_agent_killed_mid_request_leaves_it_to_its_child(grant):
    env = grant
    _wait(lambda: _agent_running(env))
    deploying = _member_deploy(env, "0.45", 6)
    try:
        _wait(lambda: _agent_processes(env, child=True))
        [parent] = _agent_processes(env, child=False)
        parent.kill()  # kill -9: supervisord starts a new agent, the child goes on
        out, err = deploying.communicate(timeout=600)
    finally:
        deploying.kill()
    assert deploying.returncode == 0, out + err
    [request] = json.loads(out)["requests"]
    assert request["state"] == "deployed", request
    _wait(lambda: _agent_running(env))
    assert "0.45" in psutil.Process(env.pids()["changing"]).cmdline()


def test_a_request_whose_child_is_killed_is_answered_interrupted_once(grant):
    env = grant
    _wait(lambda: _agent_running(env))
    deploying = _member_deploy(env, "0.55", 6)
    try:
        # once it took the request (a child killed before that leaves it to the next one)
        _wait(lambda: [n for n in os.listdir(env.requests_dir)
                       if n.endswith(".taken") and not n.startswith("2099")])
        [child] = _wait(lambda: _agent_processes(env, child=True))
        child.kill()
        out, err = deploying.communicate(timeout=600)
    finally:
        deploying.kill()
    assert deploying.returncode == 1, out + err
    [request] = json.loads(out)["requests"]
    assert request["state"] == "interrupted", request
    assert "not run again" in env.agent_log()
    # (the planted ones, which their makers left unwritable to the owner, stay until removed)
    assert not [n for n in os.listdir(env.requests_dir)
                if not n.endswith(".result.json") and not n.startswith("2099")]


def test_a_huge_file_is_refused_on_both_sides(grant):
    env = grant
    _wait(lambda: _agent_running(env))
    before = env.pids()

    def with_huge_file(folder: Path) -> None:
        _request_json(folder)
        (folder / "root/sites/dg.toml").write_text(env.site_file(MEMBER).read_text())
        with open(folder / "root/huge.whl", "wb") as handle:
            handle.truncate(60 << 20)  # sparse: 60 MB by its size

    huge = _plant(env, "20990101T000000Z-big-1", MEMBER, with_huge_file)
    answer = huge.with_name(huge.name + ".result.json")
    _wait(answer.exists)
    assert "more than 50 MB" in json.loads(answer.read_text())["detail"]
    assert env.pids() == before


def test_a_squatted_requests_dir_is_refused_and_reported(grant):
    env = grant
    _wait(lambda: _agent_running(env))
    shutil.rmtree(env.requests_dir)
    env.requests_dir.mkdir()
    os.chmod(env.requests_dir, 0o3777)
    subprocess.run(["chown", f"{OUTSIDER}:{GROUP}", str(env.requests_dir)], check=True)
    try:
        result = env.run(OWNER, "up")
        assert result.returncode == 0
        assert f"belongs to {OUTSIDER}, not {OWNER}" in result.stdout
        result = env.run(MEMBER, "deploy")
        assert result.returncode == 1
        assert "no request is left there" in result.stdout
        assert os.listdir(env.requests_dir) == []
    finally:
        shutil.rmtree(env.requests_dir)
    assert env.run(OWNER, "up").returncode == 0
    assert os.lstat(env.requests_dir).st_uid == pwd.getpwnam(OWNER).pw_uid


def test_a_member_deploy_that_fails_in_the_owners_instance_rolls_back_and_exits_1(grant):
    env = grant
    _wait(lambda: _agent_running(env))
    before = env.pids()
    text = env.site_file(MEMBER).read_text()
    env.write_site(MEMBER, text + textwrap.dedent("""
        [programs.broken]
        instance = "app"
        command = "sh -c 'exit 3'"
        startsecs = 1
        startretries = 0
        """))
    result = env.run(MEMBER, "deploy", "--json")
    env.write_site(MEMBER, text)
    assert result.returncode == 1, result.stdout + result.stderr
    [request] = json.loads(result.stdout)["requests"]
    assert request["state"] == "rolled back", request
    assert "broken" in request["detail"]
    after = env.pids()
    assert "broken" not in after  # the previous release runs again
    assert after["steady"] == before["steady"]
    releases = json.loads(env.run(OWNER, "releases", "--json").stdout)["releases"]
    assert releases[-1]["failed"]
    assert releases[-1]["requester"] == MEMBER


def test_a_members_rollback_asks_the_agent_for_the_owners_previous_release(grant):
    env = grant
    _wait(lambda: _agent_running(env))
    pointers = json.loads(env.run(OWNER, "releases", "--json").stdout)
    result = env.run(MEMBER, "rollback", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    [request] = json.loads(result.stdout)["requests"]
    assert request["state"] == "deployed", request
    assert request["release"] == pointers["previous"]
    after = json.loads(env.run(OWNER, "releases", "--json").stdout)
    assert after["current"] == pointers["previous"]


def test_the_owners_up_adds_or_removes_the_agent_without_restarting_programs(grant):
    env = grant
    _wait(lambda: _agent_running(env))
    before = env.pids()
    text = env.site_file(OWNER).read_text()
    env.write_site(OWNER, text.replace('grant = "deploy"', 'grant = "control"'))
    try:
        assert env.run(OWNER, "up").returncode == 0
        assert "siteboot-deploy-agent" not in env.pids()
    finally:
        env.write_site(OWNER, text)
    assert env.run(OWNER, "up").returncode == 0
    _wait(lambda: _agent_running(env))
    after = env.pids()
    assert after["steady"] == before["steady"]
    assert after["siteboot-deploy-agent"] != before["siteboot-deploy-agent"]
