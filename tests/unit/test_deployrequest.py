"""Deploy requests: what the agent accepts (``take_copy``), what it refuses before applying
(``check_request_plan``), and that one bad request never stops it (``agent``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from siteboot import agent, deployrequest
from siteboot.changes import ConfigChanges, ProgramChange
from siteboot.deployrequest import RequestRefused, check_request_plan, request_ids, take_copy
from siteboot.errors import SitebootError
from siteboot.requestsdir import spec_for
from siteboot.site import DEPLOY_AGENT_PROGRAM, load_site
from tests.helpers import plan_from

ME = os.getuid()


def _request(folder: Path, name: str = "20260101T000000Z-ci-abc") -> Path:
    entry = folder / name
    (entry / "root" / "sites").mkdir(parents=True)
    (entry / "request.json").write_text(json.dumps({"action": "deploy"}))
    (entry / "root" / "sites" / "t.toml").write_text("[site]\n")
    return entry


def test_a_members_request_is_copied_with_every_file(tmp_path):
    entry = _request(tmp_path)
    (entry / "root" / "run.sh").write_text("echo hi\n")
    os.chmod(entry / "root" / "run.sh", 0o750)
    assert take_copy(entry, tmp_path / "copy", {ME}) == ME
    assert (tmp_path / "copy" / "root" / "sites" / "t.toml").read_text() == "[site]\n"
    assert os.stat(tmp_path / "copy" / "root" / "run.sh").st_mode & 0o777 == 0o700
    assert os.stat(tmp_path / "copy").st_mode & 0o777 == 0o700


def test_a_non_members_request_is_refused(tmp_path):
    entry = _request(tmp_path)
    with pytest.raises(RequestRefused, match="not a member of the group"):
        take_copy(entry, tmp_path / "copy", {ME + 4242})
    assert not (tmp_path / "copy").exists()


def test_a_symlink_inside_is_refused(tmp_path):
    entry = _request(tmp_path)
    secret = tmp_path / "owner.key"
    secret.write_text("k\n")
    (entry / "root" / "templates").mkdir()
    (entry / "root" / "templates" / "supervisord.conf.j2").symlink_to(secret)
    with pytest.raises(RequestRefused, match="is a symlink"):
        take_copy(entry, tmp_path / "copy", {ME})


def test_the_request_itself_as_a_symlink_is_refused(tmp_path):
    target = _request(tmp_path, "real")
    (tmp_path / "20260101T000000Z-x").symlink_to(target)
    with pytest.raises(RequestRefused, match="not a directory"):
        take_copy(tmp_path / "20260101T000000Z-x", tmp_path / "copy", {ME})


def test_a_hard_link_is_refused(tmp_path):
    entry = _request(tmp_path)
    os.link(entry / "root" / "sites" / "t.toml", tmp_path / "elsewhere")
    with pytest.raises(RequestRefused, match="hard links"):
        take_copy(entry, tmp_path / "copy", {ME})


def test_a_file_of_another_uid_is_refused(tmp_path):
    entry = _request(tmp_path)
    os.chown(entry / "root" / "sites" / "t.toml", ME + 4242, -1)
    with pytest.raises(RequestRefused, match="not to the requester"):
        take_copy(entry, tmp_path / "copy", {ME})


def test_a_world_writable_entry_is_refused(tmp_path):
    entry = _request(tmp_path)
    os.chmod(entry / "root", 0o777)
    with pytest.raises(RequestRefused, match="writable by everyone"):
        take_copy(entry, tmp_path / "copy", {ME})


@pytest.mark.skipif(not shutil.which("setfacl"), reason="needs setfacl")
def test_an_acl_is_refused(tmp_path):
    entry = _request(tmp_path)
    done = subprocess.run(["setfacl", "-m", "u:nobody:rw", str(entry / "request.json")],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("this file system has no ACLs")
    with pytest.raises(RequestRefused, match="ACL"):
        take_copy(entry, tmp_path / "copy", {ME})


def test_too_big_or_too_many_is_refused(tmp_path, monkeypatch):
    entry = _request(tmp_path)
    (entry / "root" / "big.whl").write_bytes(b"x" * 4096)
    monkeypatch.setattr(deployrequest, "MAX_BYTES", 1024)
    with pytest.raises(RequestRefused, match="more than"):
        take_copy(entry, tmp_path / "copy", {ME})
    monkeypatch.setattr(deployrequest, "MAX_BYTES", 1 << 20)
    monkeypatch.setattr(deployrequest, "MAX_FILES", 2)
    with pytest.raises(RequestRefused, match="more than 2 files"):
        take_copy(entry, tmp_path / "copy2", {ME})


def test_only_complete_requests_and_unanswered_taken_ones_are_pending(tmp_path):
    for name in ("a1.partial", "a2", "a3.taken", "a4.taken", "a4.result.json", ".hidden",
                 "../x", "a5.result.json"):
        if "/" not in name:
            (tmp_path / name).mkdir()
    assert request_ids(tmp_path) == (["a2"], ["a3"])


# ------------------------------------------------------------------------------------------
# Refused before applying


SITE = """
    [site]
    name = "t"
    runtime_dir = "{d}/rt-{{env}}"
    state_dir = "{d}/st/{{site}}-{{env}}"
    shared_dir = "{d}/shared"

    [instances.main]
    port = {{ dev = 40001, staging = 40002, prod = 40003 }}
    group = "root"
    grant = "deploy"

    [programs.web]
    instance = "main"
    command = "python3 -m http.server 41001"
    """


def _checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: ConfigChanges,
             text: str | None = None) -> None:
    from siteboot import instances, keys, rpc

    plan = plan_from(SITE.format(d=tmp_path), tmp_path)
    spec = spec_for(plan, plan.instance("main"))
    monkeypatch.setattr(keys, "read_own_key", lambda inst: "k")
    monkeypatch.setattr(instances, "rendered", lambda *a, **k: "")
    monkeypatch.setattr(rpc, "connect", lambda *a, **k: None)
    monkeypatch.setattr(instances, "loaded_changes", lambda *a, **k: changes)
    if text is not None:
        plan = plan_from(text, tmp_path)
    check_request_plan(plan, tmp_path, spec)


def test_a_program_change_passes(tmp_path, monkeypatch):
    _checked(tmp_path, monkeypatch, ConfigChanges([ProgramChange("web", "changed", ("command",))]))


def test_a_server_setting_change_is_refused(tmp_path, monkeypatch):
    with pytest.raises(RequestRefused, match=r"server settings: \[supervisord\] umask.*"
                                             "siteboot up"):
        _checked(tmp_path, monkeypatch, ConfigChanges([], ["[supervisord] umask"]))


def test_a_change_of_the_agent_itself_is_refused(tmp_path, monkeypatch):
    with pytest.raises(RequestRefused, match="the deploy agent itself"):
        _checked(tmp_path, monkeypatch, ConfigChanges([ProgramChange(DEPLOY_AGENT_PROGRAM,
                                                                     "removed")]))


@pytest.mark.parametrize(("old", "new", "key"), [
    ("dev = 40001,", "dev = 40009,", "port"),
    ('grant = "deploy"', 'grant = "control"', "grant"),
    ('shared_dir = "{d}/shared"', 'shared_dir = "{d}/other"', "shared_key_path"),
    ('state_dir = "{d}/st', 'state_dir = "{d}/st2', "state_dir"),
])
def test_a_change_of_the_instances_keys_is_refused(tmp_path, monkeypatch, old, new, key):
    text = SITE.replace(old, new).format(d=tmp_path)
    with pytest.raises(RequestRefused, match=f"changes the instance's {key}"):
        _checked(tmp_path, monkeypatch, ConfigChanges(), text)


def test_check_rejects_grant_without_group(tmp_path):
    from siteboot.ops import check

    path = tmp_path / "t.toml"
    path.write_text(SITE.format(d=tmp_path).replace('group = "root"\n', ""))
    result = check([path])
    messages = [p.message for p in result.problems]
    assert any("'grant' says what `group` grants" in m for m in messages), messages
    assert any(f"{path}:" in p.where for p in result.problems)


def test_the_agents_name_is_reserved(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(SITE.format(d=tmp_path) + f'\n[programs.{DEPLOY_AGENT_PROGRAM}]\n'
                    'instance = "main"\ncommand = "true"\n')
    from siteboot.errors import SiteFileError

    with pytest.raises(SiteFileError, match="siteboot's deploy agent"):
        load_site(path)


# ------------------------------------------------------------------------------------------
# The agent


def _agent_setup(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    requests, work, runtime = tmp_path / "req", tmp_path / "work", tmp_path / "rt"
    requests.mkdir()
    runtime.mkdir(mode=0o700)
    spec = {"site": "t", "env": "dev", "instance": "main", "requests_dir": str(requests),
            "work_dir": str(work), "group": "root", "identity": {}}
    spec_path = runtime / "agent-main.json"
    spec_path.write_text(json.dumps(spec))
    os.chmod(spec_path, 0o600)
    return spec_path, spec


def test_one_bad_request_is_answered_and_the_next_one_still_runs(tmp_path, monkeypatch):
    spec_path, spec = _agent_setup(tmp_path)
    requests = Path(spec["requests_dir"])
    bad = _request(requests, "20260101T000000Z-ci-1")
    (bad / "root" / "link").symlink_to("/etc/shadow")
    _request(requests, "20260101T000000Z-ci-2")
    applied = []

    def fake_apply(spec: dict[str, Any], copy: Path, requester: str) -> dict[str, Any]:
        applied.append(copy.name)
        raise RuntimeError("a bug")

    monkeypatch.setattr(deployrequest, "apply_request", fake_apply)
    # the children, in-process: each request once
    monkeypatch.setattr(agent, "run_child", agent.handle_one)
    agent.serve_once(spec_path, spec)
    first = json.loads((requests / "20260101T000000Z-ci-1.result.json").read_text())
    second = json.loads((requests / "20260101T000000Z-ci-2.result.json").read_text())
    assert first["state"] == "refused"
    assert "is a symlink" in first["detail"]
    assert second["state"] == "failed"
    assert "RuntimeError: a bug" in second["detail"]
    assert applied == ["20260101T000000Z-ci-2"]
    assert sorted(os.listdir(requests)) == ["20260101T000000Z-ci-1.result.json",
                                            "20260101T000000Z-ci-2.result.json"]
    assert os.stat(requests / "20260101T000000Z-ci-1.result.json").st_mode & 0o777 == 0o640
    agent.serve_once(spec_path, spec)  # answered: never run again
    assert applied == ["20260101T000000Z-ci-2"]


def test_a_request_taken_by_a_killed_agent_is_answered_not_run_again(tmp_path, monkeypatch):
    spec_path, spec = _agent_setup(tmp_path)
    requests = Path(spec["requests_dir"])
    _request(requests, "20260101T000000Z-ci-1.taken")
    Path(spec["work_dir"]).mkdir(mode=0o700)
    monkeypatch.setattr(agent, "run_child", lambda *a: pytest.fail("run again"))
    agent.serve_once(spec_path, spec)
    answer = json.loads((requests / "20260101T000000Z-ci-1.result.json").read_text())
    assert answer["state"] == "interrupted"
    assert not (requests / "20260101T000000Z-ci-1.taken").exists()


def test_a_spec_others_could_write_is_not_served(tmp_path):
    spec_path, _ = _agent_setup(tmp_path)
    assert agent.load_spec(spec_path) is not None
    os.chmod(spec_path, 0o666)
    assert agent.load_spec(spec_path) is None
    os.chmod(spec_path, 0o600)
    os.chmod(spec_path.parent, 0o777)
    assert agent.load_spec(spec_path) is None


def test_group_members_are_looked_up_per_uid():
    import grp
    import pwd

    root_group = grp.getgrgid(0).gr_name
    members = deployrequest.GroupMembers(root_group)
    assert 0 in members  # root's primary group
    nobody = pwd.getpwnam("nobody").pw_uid
    assert (nobody in members) == ("nobody" in grp.getgrgid(0).gr_mem)
    assert 4242424 not in members  # no such account


def test_a_request_named_like_an_earlier_one_still_runs_once(tmp_path, monkeypatch):
    spec_path, spec = _agent_setup(tmp_path)
    requests = Path(spec["requests_dir"])
    _request(requests, "20260101T000000Z-ci-1.taken")  # left over, its answer pruned
    _request(requests, "20260101T000000Z-ci-1")
    (requests / "20260101T000000Z-ci-1" / "root" / "fifo").unlink(missing_ok=True)
    os.mkfifo(requests / "20260101T000000Z-ci-1" / "root" / "fifo")
    monkeypatch.setattr(agent, "run_child", agent.handle_one)
    monkeypatch.setattr(agent, "answer_interrupted", lambda *a: None)
    agent.serve_once(spec_path, spec)
    answer = json.loads((requests / "20260101T000000Z-ci-1.result.json").read_text())
    assert answer["state"] == "refused"
    assert "neither a file nor a directory" in answer["detail"]  # a FIFO: never opened
    assert request_ids(requests) == ([], [])


# ------------------------------------------------------------------------------------------
# The member's side


def _member_plan(tmp_path: Path) -> Any:
    (tmp_path / "sites").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "app.conf.j2").write_text("x\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "setup.py").write_text("")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "x.pyc").write_text("")
    (tmp_path / "elsewhere.txt").write_text("not read by the plan\n")
    text = SITE.format(d=tmp_path) + '\n[venvs.app]\nrequirements = ["./pkg", "requests"]\n'
    site_file = tmp_path / "sites" / "t.toml"
    site_file.write_text(text)
    from siteboot.plan import make_plan

    plan = make_plan(load_site(site_file), "dev")
    inst = plan.instance("main")
    os.makedirs(inst.requests_dir.parent, exist_ok=True)
    os.mkdir(inst.requests_dir)
    os.chmod(inst.requests_dir, 0o3770)
    return plan


def test_a_request_holds_what_the_plan_reads_of_the_site_root(tmp_path):
    plan = _member_plan(tmp_path)
    assert sorted(deployrequest.request_files(plan, tmp_path)) == [
        "pkg/setup.py", "sites/t.toml", "templates/app.conf.j2"]
    inst = plan.instance("main")
    request_id = deployrequest.submit(plan, inst, tmp_path, "deploy", None)
    made = inst.requests_dir / request_id
    assert json.loads((made / "request.json").read_text())["instance"] == "main"
    assert (made / "root" / "pkg" / "setup.py").exists()
    assert os.stat(made).st_mode & 0o7777 == 0o2770
    assert take_copy(made, tmp_path / "copy", {ME}) == ME  # what the agent accepts


def test_a_request_too_big_is_not_left(tmp_path, monkeypatch):
    plan = _member_plan(tmp_path)
    monkeypatch.setattr(deployrequest, "MAX_FILES", 1)
    inst = plan.instance("main")
    with pytest.raises(SitebootError, match="would exceed 1 files"):
        deployrequest.submit(plan, inst, tmp_path, "deploy", None)
    assert os.listdir(inst.requests_dir) == []
