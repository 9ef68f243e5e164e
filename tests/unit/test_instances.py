"""Identity, stale state, escalation and locks of supervisord instances, without supervisord."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from siteboot.errors import InstanceError
from siteboot.instances import (
    _is_supervisord_of,
    clear_stale,
    find_supervisord,
    instance_lock,
    read_pidfile,
)
from siteboot.plan import InstancePlan, Plan
from siteboot.proc import supervisor_command
from tests.helpers import dead_pid, plan_from

SITE = """
[site]
name = "t"
envs = ["dev"]
runtime_dir = "{base}/run"
state_dir = "{base}/state"

[instances.alpha]
port = {{ dev = 40001 }}

[instances.beta]
port = {{ dev = 40002 }}

[programs.web]
instance = "alpha"
command = "sleep 100"
"""


@pytest.fixture
def base(short_dir: Path) -> Path:
    return short_dir


@pytest.fixture
def plan(base: Path) -> Plan:
    plan: Plan = plan_from(SITE.format(base=base), base)
    for inst in plan.instances.values():
        inst.runtime_dir.mkdir(parents=True, mode=0o700)
    return plan


@pytest.fixture
def alpha(plan: Plan) -> InstancePlan:
    return plan.instances["alpha"]


# --------------------------------------------------------------------------------------------
# Identity


def test_is_supervisord_of_the_ways_siteboot_and_others_start_it(alpha):
    conf = str(alpha.conf_path)
    assert _is_supervisord_of(supervisor_command("supervisord", alpha.conf_path), alpha)
    assert _is_supervisord_of(supervisor_command("supervisord", alpha.conf_path, "-n"), alpha)
    assert _is_supervisord_of(["/usr/bin/python3", "-m", "supervisor.supervisord", "-c", conf], alpha)
    assert _is_supervisord_of(["/venv/bin/python", "/venv/bin/supervisord", "-c", conf], alpha)
    assert _is_supervisord_of(["supervisord", "-c", conf, "-n"], alpha)


def test_is_supervisord_of_refuses_other_processes(plan, alpha):
    conf = str(alpha.conf_path)
    other = str(plan.instances["beta"].conf_path)
    assert not _is_supervisord_of(supervisor_command("supervisord", plan.instances["beta"].conf_path), alpha)
    assert not _is_supervisord_of(["supervisord", "-c", other], alpha)
    assert not _is_supervisord_of(["supervisord", "-c", conf + ".bak"], alpha)
    # the config's own name contains "supervisord": whoever reads it is not supervisord
    assert not _is_supervisord_of(["tail", "-f", conf], alpha)
    assert not _is_supervisord_of(["less", conf], alpha)
    assert not _is_supervisord_of(["vim", "-R", conf], alpha)
    assert not _is_supervisord_of(["python3", "-m", "supervisor.supervisorctl", "-c", conf], alpha)
    assert not _is_supervisord_of([], alpha)


def test_find_supervisord_ignores_an_unrelated_live_pid(alpha):
    alpha.pidfile.write_text(f"{os.getpid()}\n")
    assert find_supervisord(alpha) is None
    assert alpha.pidfile.exists()  # finding never removes anything


def test_find_supervisord_with_a_dead_pid_or_garbage(alpha):
    alpha.pidfile.write_text(f"{dead_pid()}\n")
    assert find_supervisord(alpha) is None
    alpha.pidfile.write_text("not a pid\n")
    assert read_pidfile(alpha) is None
    assert find_supervisord(alpha) is None


def test_find_supervisord_by_pidfile_and_by_process_table(alpha, base, spawn):
    # A stand-in whose command line is this instance's supervisord: python named "supervisord"
    fake = base / "bin" / "supervisord"
    fake.parent.mkdir()
    fake.symlink_to(sys.executable)
    proc = spawn(str(fake), "-c", "import time; time.sleep(30)", "-c", str(alpha.conf_path))
    alpha.pidfile.write_text(f"{proc.pid}\n")
    found = find_supervisord(alpha)
    assert found is not None
    assert found.pid == proc.pid
    # runtime files wiped (a /tmp cleaner): still found in the process table
    alpha.pidfile.unlink()
    found = find_supervisord(alpha)
    assert found is not None
    assert found.pid == proc.pid
    # a pidfile naming someone else does not hide it either
    alpha.pidfile.write_text(f"{os.getpid()}\n")
    found = find_supervisord(alpha)
    assert found is not None
    assert found.pid == proc.pid


# --------------------------------------------------------------------------------------------
# Stale state


def test_clear_stale_dead_pid(alpha):
    pid = dead_pid()
    alpha.pidfile.write_text(f"{pid}\n")
    notes = clear_stale(alpha, None)
    assert not alpha.pidfile.exists()
    assert len(notes) == 1
    assert f"pid {pid} is not running" in notes[0]
    assert str(alpha.pidfile) in notes[0]


def test_clear_stale_live_unrelated_pid_is_left_alone(alpha, spawn, monkeypatch):
    bystander = spawn("sleep", "30")
    signals: list[tuple[int, int]] = []
    real_kill = os.kill

    def watch_kill(pid: int, sig: int) -> None:
        signals.append((pid, sig))
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", watch_kill)
    for pid in (bystander.pid, os.getpid()):
        alpha.pidfile.write_text(f"{pid}\n")
        running = find_supervisord(alpha)
        assert running is None
        notes = clear_stale(alpha, running)
        assert not alpha.pidfile.exists()
        assert notes == [f"removed stale pidfile {alpha.pidfile} (pid {pid} is not this "
                         "instance's supervisord; it was left alone)"]
    assert bystander.poll() is None
    assert all(sig == 0 for _, sig in signals), signals  # probed, never signalled


def test_clear_stale_socket_without_listener(alpha):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(alpha.socket_path))
    sock.close()
    assert alpha.socket_path.exists()
    notes = clear_stale(alpha, None)
    assert not alpha.socket_path.exists()
    assert notes == [f"removed stale socket {alpha.socket_path} (no listener)"]


def test_clear_stale_both(alpha):
    alpha.pidfile.write_text(f"{dead_pid()}\n")
    alpha.socket_path.write_text("")
    notes = clear_stale(alpha, None)
    assert len(notes) == 2
    assert not alpha.pidfile.exists()
    assert not alpha.socket_path.exists()


def test_clear_stale_keeps_what_a_running_supervisord_stands_behind(alpha):
    alpha.pidfile.write_text("4242\n")
    alpha.socket_path.write_text("")

    class Running:
        pid = 4242

    assert clear_stale(alpha, Running()) == []
    assert alpha.pidfile.exists()
    assert alpha.socket_path.exists()


def test_clear_stale_pidfile_of_another_pid_while_running(alpha):
    alpha.pidfile.write_text("4243\n")

    class Running:
        pid = 4242

    notes = clear_stale(alpha, Running())
    assert len(notes) == 1
    assert not alpha.pidfile.exists()


def test_clear_stale_with_nothing_there(alpha):
    assert clear_stale(alpha, None) == []


# --------------------------------------------------------------------------------------------
# Locks


def test_lock_is_exclusive_and_released(plan, alpha):
    with instance_lock(plan, alpha, timeout=1):
        assert plan.lock_path(alpha).exists()
        with pytest.raises(InstanceError) as info, instance_lock(plan, alpha, timeout=0.1):
            pass
        assert str(plan.lock_path(alpha)) in str(info.value)
        assert alpha.name in str(info.value)
        assert "fuser" in (info.value.hint or "")
        with instance_lock(plan, plan.instances["beta"], timeout=0.1):
            pass  # another instance's lock is independent
    with instance_lock(plan, alpha, timeout=0.1):
        pass
    assert os.stat(plan.lock_path(alpha)).st_mode & 0o777 == 0o600


def test_lock_second_holder_waits(plan, alpha):
    events: list[str] = []
    held = threading.Event()

    def first() -> None:
        with instance_lock(plan, alpha, timeout=1):
            events.append("first in")
            held.set()
            time.sleep(0.3)
            events.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert held.wait(5)
        started = time.monotonic()
        with instance_lock(plan, alpha, timeout=5):
            events.append("second in")
        waited = time.monotonic() - started
    finally:
        thread.join()
    assert events == ["first in", "first out", "second in"]
    assert waited >= 0.1


def test_lock_is_released_when_the_holder_dies(plan, alpha, spawn):
    path = plan.lock_path(alpha)
    with instance_lock(plan, alpha, timeout=1):
        pass  # creates the lock file and its dirs
    holder = spawn(sys.executable, "-c",
                   "import fcntl, os, sys, time\n"
                   f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
                   "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                   f"open({str(path.parent / 'ready')!r}, 'w').close()\n"
                   "time.sleep(30)\n")
    deadline = time.monotonic() + 10
    while not (path.parent / "ready").exists():
        assert time.monotonic() < deadline
        assert holder.poll() is None
        time.sleep(0.01)
    with pytest.raises(InstanceError, match="another siteboot holds the lock"), \
            instance_lock(plan, alpha, timeout=0.1):
        pass
    holder.kill()
    holder.wait()
    with instance_lock(plan, alpha, timeout=1):
        pass


def test_a_planted_pidfile_never_hangs_or_floods(alpha):
    """Read before the runtime dir is verified: a FIFO, or a link to /dev/zero, is no pid."""
    os.mkfifo(alpha.pidfile)
    assert read_pidfile(alpha) is None  # returns at once: O_NONBLOCK, and not a regular file
    alpha.pidfile.unlink()
    alpha.pidfile.symlink_to("/dev/zero")
    assert read_pidfile(alpha) is None  # O_NOFOLLOW
    alpha.pidfile.unlink()
    alpha.pidfile.write_text("4242\n")
    assert read_pidfile(alpha) == 4242


# --------------------------------------------------------------------------------------------
# Ports checked before starting


PORTS_SITE = """
[site]
name = "t"
envs = ["dev"]
runtime_dir = "{base}/run"
state_dir = "{base}/state"

[instances.alpha]
port = {{ dev = {alpha} }}

[programs.web]
instance = "alpha"
command = "serve {{port}}"
port = {{ dev = {web} }}

[programs.api]
instance = "alpha"
command = "serve {{port}}"
port = {{ dev = 40012 }}

[programs.manual]
instance = "alpha"
command = "serve {{port}}"
port = {{ dev = 40013 }}
autostart = false

[programs.held]
instance = "alpha"
command = "serve {{port}}"
port = {{ dev = 40014 }}

[programs.worker]
instance = "alpha"
command = "work"
"""


def test_what_up_is_about_to_start_is_what_should_run_and_does_not(base):
    from siteboot.instances import _ports_to_start
    from siteboot.records import mark_stopped

    plan = plan_from(PORTS_SITE.format(base=base, alpha=40010, web=40011), base)
    alpha = plan.instances["alpha"]
    mark_stopped(alpha, ["held"], stopped=True)
    # not running: every program that starts with it
    assert _ports_to_start(alpha, []) == {40011: "program web", 40012: "program api"}
    # running: not what already runs (it holds its own port), but what is down or backing off
    infos = [{"name": "web", "statename": "RUNNING"}, {"name": "api", "statename": "BACKOFF"},
             {"name": "manual", "statename": "FATAL"}, {"name": "held", "statename": "STOPPED"}]
    assert _ports_to_start(alpha, infos) == {40012: "program api"}


def test_a_taken_port_refuses_at_once_naming_the_holder(base):
    from siteboot.fsutil import owner_name
    from siteboot.instances import _refuse_taken_ports

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    taken = sock.getsockname()[1]
    try:
        plan = plan_from(PORTS_SITE.format(base=base, alpha=40010, web=taken), base)
        alpha = plan.instances["alpha"]
        with pytest.raises(InstanceError) as info:
            _refuse_taken_ports(alpha, {40010: "supervisord-alpha", taken: "program web"})
        text = str(info.value)
        assert text.startswith("nothing started, a port it needs is taken:\n"
                               f"    port {taken} (program web) is held by pid {os.getpid()} (")
        assert f"user {owner_name(os.geteuid())})" in text
        assert "pytest" in text or "python" in text  # its command line
        assert "hint: stop that process, or change the port in the site file" in text
        _refuse_taken_ports(alpha, {40010: "supervisord-alpha"})  # a free port passes
    finally:
        sock.close()


def test_nothing_is_rendered_with_an_unallocated_auto_port(base):
    from siteboot.instances import provision

    plan = plan_from(SITE.format(base=base).replace("port = { dev = 40001 }", 'port = "auto"'),
                     base)
    with pytest.raises(InstanceError, match="its auto ports are not allocated yet: "
                                            "supervisord-alpha"):
        provision(plan, plan.instances["alpha"], None)
    assert not plan.instances["alpha"].conf_path.exists()


@dataclasses.dataclass
class RecordingEndpoint:
    """An Endpoint stand-in that records its calls (copies made with another timeout share them)."""

    calls: list[tuple[str, tuple[object, ...]]] = dataclasses.field(default_factory=list)
    fail: str = ""
    timeout: float = 5.0

    def but(self, timeout: float) -> RecordingEndpoint:
        return dataclasses.replace(self, timeout=timeout)

    def call(self, method: str, *params: object) -> object:
        from siteboot.rpc import Fault

        self.calls.append((method, params))
        if method == self.fail:
            raise Fault(60, "ALREADY_STARTED")
        return True


def test_processes_left_on_an_old_build_are_restarted_and_said(alpha, spawn):
    from siteboot import instances
    from siteboot.venvs import VenvChange

    still = spawn("sleep", "30")
    venv = Path("/v/app")
    new = Path("/v/.app-bbbbbbbbbbbb")
    changes = [VenvChange("web", dead_pid(), venv, "/v/.app-aaaaaaaaaaaa", new),
               VenvChange("web", still.pid, venv, "/v/.app-aaaaaaaaaaaa", new),
               VenvChange("web", still.pid, venv, None, new)]
    endpoint = RecordingEndpoint()
    notes = instances._restart_stale(alpha, endpoint, changes)  # type: ignore[arg-type]
    said = "web: restarted on venv app's new build .app-bbbbbbbbbbbb (was .app-aaaaaaaaaaaa)"
    assert notes[:2] == [said, said]
    assert notes[2].startswith("web: still runs on the old build; run `siteboot restart web`")
    # the first the update restarted (its pid is gone); the second it left: restarted by name
    assert endpoint.calls == [("supervisor.stopProcess", ("web:web", True)),
                              ("supervisor.startProcess", ("web:web", True))]


# --------------------------------------------------------------------------------------------
# apply_config: exactly the changed programs restart


@dataclass
class ApplyingEndpoint:
    """supervisord's answers to an apply: ``reloadConfig`` says (added, changed, removed)."""

    reload: list[list[str]]
    timeout: float = 5.0
    calls: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)
    in_use: list[str] = field(default_factory=list)  # the groups getAllProcessInfo lists

    def but(self, timeout: float) -> ApplyingEndpoint:  # as ``rpc.Endpoint.but``: one log of calls
        return dataclasses.replace(self, timeout=timeout)

    def call(self, method: str, *params: object) -> object:
        self.calls.append((method, params))
        if method == "supervisor.getAllProcessInfo":
            return [{"name": group, "group": group} for group in self.in_use]
        return [self.reload] if method == "supervisor.reloadConfig" else True


def program_section(name: str, command: str, autostart: str = "true") -> str:
    return f"\n[program:{name}]\ncommand = {command}\nautostart = {autostart}\n"


def test_apply_restarts_what_differs_from_the_applied_copy(alpha):
    from siteboot import instances

    server = "[supervisord]\nidentifier = t-alpha-dev\n"
    alpha.started_conf_path.write_text(server + program_section("web", "a")
                                       + program_section("idle", "b") + program_section("old", "c"))
    alpha.conf_path.write_text(server + program_section("web", "a2")
                               + program_section("idle", "b", "false") + program_section("new", "d"))
    # supervisord also calls `idle` changed (autostart): siteboot's own comparison decides
    endpoint = ApplyingEndpoint([["new"], ["web", "idle"], ["old"]])
    applied = instances.apply_config(alpha, endpoint)  # type: ignore[arg-type]
    assert applied.restarted == ["web"]
    assert [c for c in endpoint.calls if c[0] != "supervisor.reloadConfig"] == [
        ("supervisor.stopProcessGroup", ("old", True)), ("supervisor.removeProcessGroup", ("old",)),
        ("supervisor.stopProcessGroup", ("web", True)), ("supervisor.removeProcessGroup", ("web",)),
        ("supervisor.addProcessGroup", ("web",)), ("supervisor.addProcessGroup", ("new",))]
    assert applied.lines(alpha) == ["removed old", "restarted web (command)", "added new"]
    assert alpha.applied_conf_path.read_text() == alpha.conf_path.read_text()
    again = instances.apply_config(alpha, ApplyingEndpoint([[], ["idle"], []]))  # type: ignore[arg-type]
    assert again.restarted == []
    assert again.lines(alpha) == []


def test_apply_of_the_config_last_applied_rereads_nothing(alpha):
    """A warm `up`: the config is the one applied last and supervisord has each of its groups
    in use, so nothing is re-read; a group removed behind siteboot's back is added again."""
    from siteboot import instances

    text = "[supervisord]\nidentifier = t-alpha-dev\n" + program_section("web", "a") \
        + program_section("idle", "b", "false")
    for path in (alpha.conf_path, alpha.started_conf_path, alpha.applied_conf_path):
        path.write_text(text)
    warm = ApplyingEndpoint([[], [], []], in_use=["web", "idle"])
    applied = instances.apply_config(alpha, warm)  # type: ignore[arg-type]
    assert warm.calls == [("supervisor.getAllProcessInfo", ())]
    assert (applied.added, applied.removed, applied.restarted, applied.lines(alpha)) == \
        ([], [], [], [])
    assert applied.not_started == ["idle"]
    removed = ApplyingEndpoint([["idle"], [], []], in_use=["web"])
    again = instances.apply_config(alpha, removed)  # type: ignore[arg-type]
    assert ("supervisor.reloadConfig", ()) in removed.calls
    assert again.lines(alpha) == ["added idle"]
    alpha.conf_path.write_text(text.replace("command = a", "command = a2"))
    edited = ApplyingEndpoint([[], ["web"], []], in_use=["web", "idle"])
    assert instances.apply_config(alpha, edited).restarted == ["web"]  # type: ignore[arg-type]
    assert ("supervisor.reloadConfig", ()) in edited.calls
