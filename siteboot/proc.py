"""The one place that starts, execs and signals processes.

Standard library only at import time: stage 0 uses it before any dependency exists. Nothing
else in siteboot calls ``subprocess``, ``os.exec*`` or ``os.kill`` (a test enforces it), so
what siteboot runs, and with which interpreter flags, is decided here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Callable, NamedTuple

# Dropped from the environment of what siteboot runs: they would make a venv's python (pip,
# supervisord) see packages of another installation.
_FOREIGN_PYTHON_VARS = ("PYTHONPATH", "PYTHONHOME")
# ``secretstore.ENV_PREFIX``: secrets handed to siteboot (masked CI variables) are for the files
# and environments that name them, not for every program, probe and pip that siteboot starts.
_SECRET_PREFIX = "SITEBOOT_SECRET_"


_DETACHED: list[Any] = []  # children started by start_detached

TIMED_OUT = 124  # the exit code of a command killed for outliving its timeout, as timeout(1) says


class RunResult(NamedTuple):
    returncode: int
    output: str  # stdout and stderr together ("" when they went to a file)


def clean_env(environ: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``environ`` (default: ours) without PYTHONPATH/PYTHONHOME, without the SUPERVISOR_*
    variables siteboot may have inherited from a supervised program (they would mark what it
    starts as that program's orphan) and without the ``SITEBOOT_SECRET_*`` ones, plus ``extra``."""
    source = os.environ if environ is None else environ
    env = {k: v for k, v in source.items()
           if k not in _FOREIGN_PYTHON_VARS and not k.startswith(("SUPERVISOR_", _SECRET_PREFIX))}
    env.update(extra)
    return env


def without_secrets(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: ours) as it is, but for the ``SITEBOOT_SECRET_*`` variables: what a
    supervisord gets, so that its programs see a secret only where their site file puts it."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if not k.startswith(_SECRET_PREFIX)}


def run_command(cmd: Sequence[str], *, cwd: Path | None = None, output: Path | None = None,
                new_session: bool = False, timeout: float | None = None,
                env: Mapping[str, str] | None = None, echo: IO[str] | None = None) -> RunResult:
    """Run ``cmd`` to completion with no stdin; stdout and stderr together.

    ``output``: write them to this file (the result's ``output`` is then empty); otherwise they
    are captured (and copied line by line to ``echo``, e.g. stderr when debugging).
    ``new_session``: the child leads its own session (a daemon must outlive our terminal).
    ``env``: the whole environment (default: ours, unchanged; see ``clean_env``).
    A command that cannot be started is exit code 127 with the reason as its output; one that
    outlives ``timeout`` is killed and is exit code ``TIMED_OUT``.
    """
    import subprocess

    environment = None if env is None else dict(env)
    try:
        if output is not None:
            with open(output, "wb") as log:
                child = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=cwd, env=environment,
                                         start_new_session=new_session)
            return RunResult(_wait(child, timeout), "")
        captured = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, cwd=cwd, env=environment,
                                    start_new_session=new_session, text=True, errors="replace")
    except OSError as exc:
        return RunResult(127, f"cannot run {cmd[0]}: {exc.strerror or exc}")
    if timeout is None:
        lines: list[str] = []
        assert captured.stdout is not None
        with captured.stdout:
            for line in captured.stdout:
                lines.append(line)
                if echo is not None:
                    echo.write(line)
        return RunResult(captured.wait(), "".join(lines))
    try:
        out, _ = captured.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return RunResult(TIMED_OUT, _killed(captured, new_session) + f"\n(killed after {timeout:g} s)\n")
    if echo is not None:
        echo.write(out)
    return RunResult(captured.returncode, out)


def _killed(child: Any, session: bool) -> str:
    """What ``child`` wrote before it was killed. Its session too, when it leads one: a shell's
    own children (``sh -c 'sleep 600; true'``) hold the pipe open, and waiting for its end would
    wait for them. One that left the session is abandoned after a short grace, pipe closed."""
    import signal
    import subprocess

    try:
        if session:
            os.killpg(child.pid, signal.SIGKILL)
        else:
            child.kill()
    except ProcessLookupError:
        pass
    try:
        out, _ = child.communicate(timeout=5.0)
    except subprocess.TimeoutExpired:
        child.stdout.close()
        child.wait()
        return ""
    return str(out or "")


def run_with_input(cmd: Sequence[str], text: str, timeout: float = 60.0) -> RunResult:
    """Run ``cmd`` with ``text`` on its stdin (``crontab -``); stdout and stderr together."""
    import subprocess

    try:
        done = subprocess.run(list(cmd), input=text, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace",
                              timeout=timeout, check=False)
    except OSError as exc:
        return RunResult(127, f"cannot run {cmd[0]}: {exc.strerror or exc}")
    except subprocess.TimeoutExpired:
        return RunResult(TIMED_OUT, f"(killed after {timeout:g} s)\n")
    return RunResult(done.returncode, done.stdout)


def start_detached(cmd: Sequence[str], *, cwd: Path, log: Path,
                   env: Mapping[str, str] | None = None) -> int:
    """Start ``cmd`` to outlive us, as ``nohup cmd >>log 2>&1 &`` would; its pid.

    It leads its own session (no terminal hangup reaches it), reads /dev/null, and appends
    stdout and stderr to ``log`` (created 0600). OSError when it cannot be started.
    """
    import subprocess

    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        child = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=fd,
                                 stderr=subprocess.STDOUT, cwd=cwd,
                                 env=None if env is None else dict(env), start_new_session=True)
    finally:
        os.close(fd)
    # Held, not dropped: a dropped Popen of a live child warns, and it is meant to outlive us.
    _DETACHED.append(child)
    return int(child.pid)


def _wait(proc: Any, timeout: float | None) -> int:
    import subprocess

    try:
        return int(proc.wait(timeout=timeout))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return TIMED_OUT


def run_foreground(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run ``cmd`` on our terminal as a shell runs a foreground job; its exit code.

    Ctrl-C and Ctrl-\\ reach it from the terminal and are its to handle (supervisorctl ends a
    `tail -f` on Ctrl-C and carries on); we wait for it either way. SIGTERM and SIGHUP sent to
    us are passed on. So the caller's cleanup runs once the child is gone, never before.
    """
    import signal
    import subprocess
    import threading

    child: list[Any] = []

    def pass_on(signum: int, _frame: Any) -> None:
        if child:
            child[0].send_signal(signum)

    handlers: dict[int, Any] = {signal.SIGINT: lambda *_: None, signal.SIGQUIT: lambda *_: None,
                                signal.SIGTERM: pass_on, signal.SIGHUP: pass_on}
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        # Python-level handlers: the child starts with the defaults again (exec resets them)
        previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        try:
            child.append(subprocess.Popen(list(cmd), env=None if env is None else dict(env)))
        except OSError as exc:
            sys.stderr.write(f"error: cannot run {cmd[0]}: {exc.strerror or exc}\n")
            return 127
        while True:
            try:
                # Waiting in short steps: a signal the kernel handed to another of our threads
                # (the ctl relay's) runs its handler only when this thread wakes up.
                return int(child[0].wait(timeout=1.0))
            except subprocess.TimeoutExpired:
                continue
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exec_replace(argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Replace this process by ``argv`` (never returns; OSError when it cannot be run)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], list(argv), dict(os.environ if env is None else env))


def python_module(module: str, *args: str, python: str | None = None) -> list[str]:
    """``python -I -m module args``: ``-I`` so that nothing in the current directory (a planted
    ``siteboot/``, ``supervisor/`` or ``pip/``) is imported instead of the real package."""
    return [python or sys.executable, "-I", "-m", module, *args]


def supervisor_command(tool: str, conf: Path, *args: str) -> list[str]:
    """``supervisord`` or ``supervisorctl`` of this interpreter with config ``conf``."""
    return python_module(f"supervisor.{tool}", "-c", str(conf), *args)


def last_lines(output: str, count: int) -> list[str]:
    """The last ``count`` non-blank lines of a command's output or a log, for error messages."""
    return [line.rstrip() for line in output.splitlines() if line.strip()][-count:]


def file_tail(path: Path, count: int = 15, max_bytes: int = 65536) -> str:
    """The last ``count`` non-blank lines of the file at ``path`` ("" when it cannot be read),
    from its last ``max_bytes`` only: a log may be large."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max_bytes))
            data = handle.read(max_bytes)
    except OSError:
        return ""
    return "\n".join(last_lines(data.decode("utf-8", "replace"), count))


# ------------------------------------------------------------------------------------------
# Signals (psutil is imported where used: stage 0 never signals anything)


def is_supervisord(cmdline: Sequence[str]) -> bool:
    """The program itself, not any argument: the config's own name contains "supervisord",
    so `tail -f .../supervisord-NAME.conf` must not pass."""
    return any(arg == "supervisor.supervisord" or os.path.basename(arg) == "supervisord"
               for arg in cmdline[:4])


def own_pids(uid: int, proc_dir: str = "/proc") -> list[int]:
    """The pids whose /proc entry ``uid`` owns (their effective owner): a first filter that
    reads no file, so a process-table search costs little on a host with many processes;
    whoever acts on a pid still checks it (a process whose entry is not its user's, setuid or
    not dumpable, hides its environment and command line from that user anyway)."""
    pids: list[int] = []
    try:
        entries = os.scandir(proc_dir)
    except OSError:
        return pids
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class ProcessView:
    """A process read from /proc (real uid, command line, start time as psutil tells it),
    standing in for a ``psutil.Process``: what else is asked of it (signals, children, waits)
    goes to one made on first need, and only while the pid still names the process that
    started then (else ``psutil.NoSuchProcess``, as from a ``psutil.Process`` of it)."""

    def __init__(self, pid: int, uid: int, cmdline: list[str], started: float) -> None:
        self.pid = pid
        self.uid = uid
        self.cmdline_read = cmdline
        self.started = started
        self._process: Any = None

    def create_time(self) -> float:
        return self.started

    def cmdline(self) -> list[str]:
        return list(self.cmdline_read)

    def is_running(self) -> bool:
        """As psutil's: False once it is gone or its pid names another process, never raises."""
        import psutil

        try:
            return bool(self.psutil_process().is_running())
        except psutil.Error:
            return False

    def wait(self, timeout: float | None = None) -> int | None:
        """As psutil's: None at once for a process that is gone."""
        import psutil

        try:
            process = self.psutil_process()
        except psutil.NoSuchProcess:
            return None
        code = process.wait(timeout)
        return None if code is None else int(code)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.psutil_process(), name)

    def psutil_process(self) -> Any:
        import psutil

        if self._process is None:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.started) > 0.05:
                raise psutil.NoSuchProcess(self.pid)
            self._process = process
        return self._process


def view_process(pid: int, proc_dir: str = "/proc") -> ProcessView | None:
    """``pid`` read from /proc, or None when it is gone, a zombie or not readable."""
    stat = read_proc_file(pid, "stat", proc_dir)
    status = read_proc_file(pid, "status", proc_dir)
    raw = read_proc_file(pid, "cmdline", proc_dir)
    fields = stat.rsplit(b")", 1)[-1].split()  # the command name may hold ") "
    uid = next((line.split()[1] for line in status.splitlines() if line.startswith(b"Uid:")),
               None)
    if len(fields) < 20 or fields[0] == b"Z" or not raw or uid is None:
        return None
    boot = _boot_time(proc_dir)
    if boot is None:
        return None
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK") + boot
    return ProcessView(pid, int(uid), [os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0")],
                       started)


def _boot_time(proc_dir: str) -> float | None:
    try:
        with open(f"{proc_dir}/stat", "rb") as handle:
            for line in handle:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def read_proc_file(pid: int, name: str, proc_dir: str = "/proc") -> bytes:
    """``/proc/<pid>/<name>``, or b"" when the process is gone or not ours to read."""
    try:
        with open(f"{proc_dir}/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def alive(proc: Any) -> bool:
    """A psutil.Process that still runs (a zombie does not: it only waits to be reaped)."""
    import psutil

    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def send_signal(proc: Any, signum: int) -> None:
    proc.send_signal(signum)


def signal_process(proc: Any, signum: int) -> bool:
    """Send ``signum`` to ``proc`` (a psutil.Process the caller identified); False if it is gone
    or not ours to signal."""
    import psutil

    try:
        proc.send_signal(signum)
    except (psutil.Error, ProcessLookupError, PermissionError):
        return False
    return True


def terminate_tree(proc: Any, extra: Sequence[Any] = (), grace: float = 5.0,
                   kill: Callable[[Any, int], None] = send_signal) -> None:
    """SIGTERM ``proc`` (a psutil.Process the caller identified) and its descendants, wait
    ``grace`` seconds, then SIGKILL whatever is left."""
    import signal

    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        procs = [proc]
    seen = {p.pid for p in procs}
    procs += [p for p in extra if p.pid not in seen]
    alive = [p for p in procs if p.is_running()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in alive:
            try:
                kill(p, sig)
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass  # gone already, or setuid (sudo, collabsu): not ours to signal
        _, alive = psutil.wait_procs(alive, timeout=grace)
        if not alive:
            return
