"""The process seam: running, timeouts, tails, signals with escalation."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from siteboot.proc import (
    TIMED_OUT,
    clean_env,
    file_tail,
    last_lines,
    pid_alive,
    python_module,
    run_command,
    run_foreground,
    start_detached,
    supervisor_command,
    terminate_tree,
)
from tests.helpers import children_of, dead_pid


def test_run_command_captures_both_streams():
    result = run_command([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert result.returncode == 0
    assert sorted(result.output.split()) == ["err", "out"]


def test_run_command_that_cannot_start_is_127():
    result = run_command(["/nonexistent/program"])
    assert result.returncode == 127
    assert "/nonexistent/program" in result.output


def test_run_command_into_a_file_in_a_directory(tmp_path: Path):
    log = tmp_path / "out.log"
    result = run_command(["sh", "-c", "pwd; echo oops >&2; exit 3"], cwd=tmp_path, output=log)
    assert result == (3, "")
    assert log.read_text().split() == [str(tmp_path), "oops"]


def test_run_command_timeout_kills_and_says_so(tmp_path: Path):
    started = time.monotonic()
    assert run_command(["sleep", "30"], timeout=0.2).returncode == TIMED_OUT
    assert run_command(["sleep", "30"], timeout=0.2, output=tmp_path / "log").returncode == TIMED_OUT
    assert time.monotonic() - started < 10


def test_run_command_new_session():
    code = "import os; print(os.getsid(0) == os.getpid())"
    assert run_command([sys.executable, "-c", code], new_session=True).output.strip() == "True"
    assert run_command([sys.executable, "-c", code]).output.strip() == "False"


def test_start_detached_is_nohup_with_a_private_appended_log(tmp_path: Path):
    log = tmp_path / "out.log"
    code = ("import os, sys; print(os.getsid(0) == os.getpid(), repr(sys.stdin.read()), os.getcwd(), "
            "os.environ.get('MARK'), flush=True); print('err', file=sys.stderr)")
    pid = start_detached([sys.executable, "-c", code], cwd=tmp_path, log=log, env={"MARK": "1"})
    assert psutil.Process(pid).wait(timeout=30) == 0
    assert log.read_text().split() == ["True", "''", str(tmp_path), "1", "err"]
    assert os.stat(log).st_mode & 0o777 == 0o600
    pid = start_detached([sys.executable, "-c", "print('again')"], cwd=tmp_path, log=log)
    assert psutil.Process(pid).wait(timeout=30) == 0
    assert log.read_text().split()[-2:] == ["err", "again"]  # appended


def test_start_detached_that_cannot_start_raises(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        start_detached(["/nonexistent/program"], cwd=tmp_path, log=tmp_path / "log")


def test_clean_env_drops_foreign_python_paths():
    env = clean_env({"PYTHONPATH": "/x", "PYTHONHOME": "/y", "PIP_INDEX_URL": "z",
                     "SUPERVISOR_SERVER_URL": "unix:///run/a.sock",
                     "SUPERVISOR_PROCESS_NAME": "web"}, EXTRA="1")
    assert env == {"PIP_INDEX_URL": "z", "EXTRA": "1"}


def test_commands_run_isolated_pythons(tmp_path: Path):
    conf = tmp_path / "s.conf"
    assert python_module("siteboot", "status")[1:] == ["-I", "-m", "siteboot", "status"]
    assert supervisor_command("supervisorctl", conf, "status") == [
        sys.executable, "-I", "-m", "supervisor.supervisorctl", "-c", str(conf), "status"]


def test_last_lines_and_file_tail(tmp_path: Path):
    assert last_lines("a\n\n b \nc\n\n", 2) == [" b", "c"]
    path = tmp_path / "log"
    path.write_text("".join(f"line {n}\n" for n in range(40)))
    assert file_tail(path, 2) == "line 38\nline 39"
    assert file_tail(tmp_path / "missing") == ""
    # a large log: only its end is read
    path.write_bytes(b"x" * 10_000_000 + b"\nlast\n")
    assert file_tail(path, 1, max_bytes=100) == "last"
    assert file_tail(path, 2, max_bytes=100) == "x" * 94 + "\nlast"


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(dead_pid())


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




def test_run_with_input_feeds_stdin():
    from siteboot.proc import run_with_input

    assert run_with_input(["cat"], "a line\n") == (0, "a line\n")
    assert run_with_input(["/nonexistent/x"], "").returncode == 127


def test_concurrently_keeps_order_and_raises_the_first_error():
    from siteboot.concurrency import concurrently

    assert concurrently(lambda n: n * 2, [1, 2, 3]) == [2, 4, 6]
    with pytest.raises(ValueError, match="3"):
        concurrently(lambda n: n if n != 3 else int("x3"[1:] + "y"), [1, 3])


def test_concurrently_gives_up_at_once_on_what_it_is_told():
    """A hung item does not hold up the caller once another raised one of ``give_up_on``."""
    import threading

    from siteboot.concurrency import concurrently

    release = threading.Event()
    hung_finished = threading.Event()

    def work(n: int) -> int:
        if n == 1:
            release.wait(60)
            hung_finished.set()
            return n
        raise LookupError(n)

    with pytest.raises(LookupError):
        concurrently(work, [1, 2], give_up_on=LookupError)
    assert not hung_finished.is_set()  # raised while the first was still waiting
    release.set()
    assert hung_finished.wait(60)


def test_run_foreground_leaves_ctrl_c_to_the_child_and_passes_sigterm_on(tmp_path: Path):
    """As a shell's foreground job: Ctrl-C is the child's to handle (supervisorctl ends a
    `tail -f` with it and carries on), and whoever terminates us terminates the child first."""
    import threading

    ready = tmp_path / "ready"
    child = ("import pathlib, signal, sys\n"
             "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
             f"pathlib.Path({str(ready)!r}).touch()\n"
             "while True: signal.pause()\n")
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def signal_us() -> None:
        while not ready.exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # ignored here: no KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # passed on: the child exits 7

    sender = threading.Thread(target=signal_us)
    sender.start()
    try:
        assert run_foreground([sys.executable, "-c", child]) == 7
    finally:
        sender.join()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_run_foreground_exit_codes():
    assert run_foreground([sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert run_foreground(["/nonexistent/program"]) == 127


def test_a_process_read_from_proc_is_what_psutil_sees():
    from siteboot.proc import own_pids, view_process

    view = view_process(os.getpid())
    assert view is not None
    mine = psutil.Process(os.getpid())
    assert (view.pid, view.uid, view.cmdline()) == (mine.pid, mine.uids().real, mine.cmdline())
    assert view.create_time() == pytest.approx(mine.create_time(), abs=0.01)
    assert view.ppid() == os.getppid()  # anything else: asked of psutil
    assert os.getpid() in own_pids(os.geteuid())
    assert view_process(2 ** 22 + 1) is None  # above any pid_max: no such process


def test_a_process_view_of_a_reused_pid_refuses_to_act_on_the_newcomer():
    from siteboot.proc import signal_process, view_process

    view = view_process(os.getpid())
    assert view is not None
    view.started -= 3600.0  # as if the process read then was gone and its pid reused
    with pytest.raises(psutil.NoSuchProcess):
        view.send_signal(0)
    assert not signal_process(view, 0)
    assert not view.is_running()  # as psutil says of a process that is gone
    assert view.wait(0.1) is None
    stand_in: Any = view  # what siteboot hands psutil where it expects a Process
    gone, alive = psutil.wait_procs([stand_in], timeout=0.1)
    assert (len(gone), alive) == (1, [])
