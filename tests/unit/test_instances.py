"""Identity, stale state, escalation and locks of supervisord instances, without supervisord."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from siteboot.errors import InstanceError
from siteboot.instances import (
    _is_supervisord_of,
    _pid_alive,
    clear_stale,
    find_supervisord,
    instance_lock,
    read_pidfile,
    supervisord_command,
    terminate_tree,
)
from siteboot.plan import InstancePlan, Plan
from tests.conftest import plan_from

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


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start processes that are killed and reaped whatever the test does."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        for child in _children(proc.pid):
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def children_of(pid: int, count: int, timeout: float = 5.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        found = _children(pid)
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{pid} has children {found}"
            return found
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# Identity


def test_is_supervisord_of_the_ways_siteboot_and_others_start_it(alpha):
    conf = str(alpha.conf_path)
    assert _is_supervisord_of(supervisord_command(alpha.conf_path), alpha)
    assert _is_supervisord_of(supervisord_command(alpha.conf_path, foreground=True), alpha)
    assert _is_supervisord_of(["/usr/bin/python3", "-m", "supervisor.supervisord", "-c", conf], alpha)
    assert _is_supervisord_of(["/venv/bin/python", "/venv/bin/supervisord", "-c", conf], alpha)
    assert _is_supervisord_of(["supervisord", "-c", conf, "-n"], alpha)


def test_is_supervisord_of_refuses_other_processes(plan, alpha):
    conf = str(alpha.conf_path)
    other = str(plan.instances["beta"].conf_path)
    assert not _is_supervisord_of(supervisord_command(plan.instances["beta"].conf_path), alpha)
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


def test_pid_alive():
    assert _pid_alive(os.getpid())
    assert not _pid_alive(dead_pid())


# --------------------------------------------------------------------------------------------
# terminate_tree


class Recorder:
    """An injected kill: records every signal; drops SIGTERM to ``deaf`` (processes ignoring it)."""

    def __init__(self, deaf: set[int] | None = None) -> None:
        self.deaf = deaf or set()
        self.sent: list[tuple[int, int]] = []

    def __call__(self, proc: psutil.Process, sig: int) -> None:
        self.sent.append((proc.pid, sig))
        if sig == signal.SIGTERM and proc.pid in self.deaf:
            return
        proc.send_signal(sig)


def test_terminate_tree_terms_parent_and_descendants(spawn):
    parent = spawn("sh", "-c", "sleep 30 & sleep 30 & wait")
    kids = children_of(parent.pid, 2)
    # The shell ignores its SIGTERM here, so it reaps its children and then exits by itself:
    # no orphans, which some container inits reap only once a second.
    kill = Recorder(deaf={parent.pid})
    started = time.monotonic()
    terminate_tree(psutil.Process(parent.pid), grace=5, kill=kill)
    assert time.monotonic() - started < 3
    assert sorted(kill.sent) == sorted([(parent.pid, signal.SIGTERM),
                                        *((k.pid, signal.SIGTERM) for k in kids)])
    assert not psutil.pid_exists(parent.pid)
    assert not any(psutil.pid_exists(k.pid) for k in kids)


def test_terminate_tree_escalates_to_sigkill(spawn):
    deaf = spawn("sleep", "30")
    handle = psutil.Process(deaf.pid)
    kill = Recorder(deaf={deaf.pid})
    started = time.monotonic()
    terminate_tree(handle, grace=0.2, kill=kill)
    assert 0.2 <= time.monotonic() - started < 3
    assert kill.sent == [(deaf.pid, signal.SIGTERM), (deaf.pid, signal.SIGKILL)]
    assert handle.returncode == -signal.SIGKILL  # type: ignore[attr-defined]


def test_terminate_tree_stops_at_sigterm_when_that_suffices(spawn):
    proc = spawn("sleep", "30")
    handle = psutil.Process(proc.pid)
    kill = Recorder()
    terminate_tree(handle, grace=5, kill=kill)
    assert kill.sent == [(proc.pid, signal.SIGTERM)]
    assert handle.returncode == -signal.SIGTERM  # type: ignore[attr-defined]


def test_terminate_tree_includes_extra_processes(spawn):
    main = psutil.Process(spawn("sleep", "30").pid)
    # e.g. a descendant that was already reparented away; listing main again changes nothing
    orphan = psutil.Process(spawn("sleep", "30").pid)
    kill = Recorder()
    terminate_tree(main, extra=[orphan, psutil.Process(main.pid)], grace=5, kill=kill)
    assert sorted(kill.sent) == sorted([(main.pid, signal.SIGTERM), (orphan.pid, signal.SIGTERM)])
    assert main.returncode == orphan.returncode == -signal.SIGTERM  # type: ignore[attr-defined]


def test_terminate_tree_of_a_process_already_gone(spawn):
    proc = spawn("sleep", "30")
    handle = psutil.Process(proc.pid)
    proc.kill()
    proc.wait()
    kill = Recorder()
    terminate_tree(handle, grace=0.2, kill=kill)
    assert kill.sent == []


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
