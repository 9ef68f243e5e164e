"""gitlab-runner: found by identity, revived once, drained the way GitLab drains, stopped.

``[runner] mode``:
- ``supervised``: the program ``gitlab-runner`` of its instance (``stopsignal = QUIT``,
  ``stopwaitsecs = drain_timeout``); status, revive, drain and stop go through that supervisord.
- ``detached``: a process of its own session, as JAWS ran ``nohup gitlab-runner run &``;
  ``revive`` starts one only when none runs, under a lock, so there are never two on one config.

A runner is identified by what the kernel reports, never by a text grep: the owner's real uid,
the program (``/proc/PID/exe``; argv[0] resolved against the process's cwd; for a script, the
argument after its interpreter), ``run`` as its command, and the same config (``--config``,
``-c``, ``CONFIG_FILE`` or gitlab-runner's default, resolved against its cwd). The process table
is read from /proc with the standard library, because ``siteboot status`` shows the runner and
must not import psutil; psutil is imported only to signal and to wait.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from siteboot.accounts import expand_home, uid_of
from siteboot.errors import (
    EXIT_FAILED,
    EXIT_OK,
    STATUS_CRITICAL,
    STATUS_OK,
    STATUS_UNKNOWN,
    STATUS_WARNING,
    SitebootError,
    UsageError,
)
from siteboot.hints import command
from siteboot.login import in_preamble, wrap
from siteboot.plan import Plan, RunnerPlan
from siteboot.site import RUNNER_PROGRAM

LOCK_TIMEOUT = 120.0
START_GRACE = 1.0  # a runner that exits within this after its start is reported as failed
PREAMBLE_TIMEOUT = 120.0  # how long a detached runner's login preamble may take
STOP_GRACE = 30.0  # SIGTERM to SIGKILL: gitlab-runner's own default shutdown_timeout

# Runner states (``RunnerStatus.state``)
RUNNING = "running"
STARTING = "starting"  # supervised: STARTING or BACKOFF
STOPPED = "stopped"  # not running, as an operator wanted (as `siteboot status` counts it: OK)
NOT_RUNNING = "not running"
NOT_YOURS = "not yours"
ELSEWHERE = "elsewhere"  # its instance is placed on another host (as `status` counts it: not)
UNKNOWN = "unknown"
_SEVERITY = {RUNNING: STATUS_OK, STOPPED: STATUS_OK, STARTING: STATUS_WARNING,
             NOT_RUNNING: STATUS_CRITICAL}

Progress = Callable[[str], None]


# ------------------------------------------------------------------------------------------
# The process table, from /proc


@dataclass(frozen=True)
class ProcessView:
    """What /proc says about one process."""

    pid: int
    uid: int  # real uid
    exe: str  # the program the kernel runs ("" when unreadable)
    cmdline: tuple[str, ...]
    cwd: str  # "" when unreadable
    create_time: float  # seconds since the epoch, computed as psutil computes it
    config_env: str | None = None  # CONFIG_FILE in its environment (read for `run` processes only)


_PROC = Path("/proc")


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _environ_value(path: Path, name: str) -> str | None:
    try:
        entries = path.read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = os.fsencode(name) + b"="
    return next((os.fsdecode(e[len(prefix):]) for e in entries if e.startswith(prefix)), None)


def _boot_time_and_ticks() -> tuple[float, int]:
    for line in (_PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1]), os.sysconf("SC_CLK_TCK")
    raise OSError("no btime in /proc/stat")


def read_process(pid: int, boot: float, ticks: int) -> ProcessView | None:
    """One process, or None when it is gone, a zombie or a kernel thread."""
    base = _PROC / str(pid)
    try:
        raw = (base / "cmdline").read_bytes()
        stat = (base / "stat").read_text()
        status = (base / "status").read_text()
    except OSError:
        return None
    # the command name in parentheses may hold spaces and parentheses itself
    fields = stat.rsplit(")", 1)[-1].split()
    if not raw or not fields or fields[0] == "Z":
        return None
    uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
    cmdline = tuple(os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0"))
    return ProcessView(
        pid=pid, uid=int(uid_line.split()[1]) if uid_line else -1, exe=_readlink(base / "exe"),
        cmdline=cmdline, cwd=_readlink(base / "cwd"),
        create_time=int(fields[19]) / ticks + boot,
        config_env=_environ_value(base / "environ", "CONFIG_FILE") if "run" in cmdline else None,
    )


def processes_of(uid: int) -> list[ProcessView]:
    """Every live process whose real uid is ``uid``."""
    boot, ticks = _boot_time_and_ticks()
    views = []
    for entry in os.scandir(_PROC):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:  # the effective owner: a cheap first filter
                continue
        except OSError:
            continue
        view = read_process(int(entry.name), boot, ticks)
        if view is not None and view.uid == uid:
            views.append(view)
    return views


# ------------------------------------------------------------------------------------------
# Identity


@dataclass(frozen=True)
class RunnerIdentity:
    """What a process must show to be this site's runner."""

    uid: int
    executable: str  # real path
    interpreter: tuple[str, ...]  # a script's shebang words (base names); () for a binary
    config: str  # real path
    default_config: str  # what gitlab-runner reads without --config


# gitlab-runner's global options that take a value (they come before the command)
_GLOBAL_VALUE_FLAGS = frozenset({"l", "log-level", "log-format", "cpuprofile"})
_CONFIG_FLAGS = frozenset({"c", "config"})


def _shebang(path: str) -> tuple[str, ...]:
    try:
        with open(path, "rb") as handle:
            first = handle.readline(256)
    except OSError:
        return ()
    if not first.startswith(b"#!"):
        return ()
    return tuple(os.path.basename(word) for word in os.fsdecode(first[2:]).split())


def _resolve(path: str, cwd: str) -> str | None:
    """``path`` as the process sees it (relative to its cwd), symlinks resolved."""
    if not os.path.isabs(path):
        if not cwd:
            return None
        path = os.path.join(cwd, path)
    return os.path.realpath(path)


def identity(runner: RunnerPlan) -> RunnerIdentity:
    if runner.resolved is None:
        raise SitebootError(f"cannot find {runner.executable} on PATH",
                            "set [runner] executable to the absolute path of gitlab-runner")
    uid = uid_of(runner.user)
    executable = os.path.realpath(runner.resolved)
    # gitlab-runner's own default: /etc/gitlab-runner for root, else the account's home
    default = ("/etc/gitlab-runner/config.toml" if uid == 0
               else str(expand_home("~/.gitlab-runner/config.toml", runner.user)))
    return RunnerIdentity(uid, executable, _shebang(executable), os.path.realpath(runner.config),
                          os.path.realpath(default))


def _program_index(view: ProcessView, ident: RunnerIdentity) -> int | None:
    """Where the runner's program stands in ``view.cmdline`` (after a script's interpreter)."""
    argv = view.cmdline
    exe = view.exe[:-len(" (deleted)")] if view.exe.endswith(" (deleted)") else view.exe  # upgraded
    if exe and os.path.realpath(exe) == ident.executable:
        return 0
    if "/" in argv[0] and _resolve(argv[0], view.cwd) == ident.executable:
        return 0
    if ident.interpreter:  # the kernel runs `interpreter [options] script args`
        for i in range(1, min(len(argv), 4)):
            before = argv[:i]
            if all(a.startswith("-") or os.path.basename(a) in ident.interpreter for a in before) \
                    and _resolve(argv[i], view.cwd) == ident.executable:
                return i
    return None


def _command_index(args: Sequence[str]) -> int | None:
    """The index of gitlab-runner's command (``run``, ``register``...) among its arguments."""
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            return i
        if arg == "--":
            return i + 1 if i + 1 < len(args) else None
        name = arg.lstrip("-")
        if "=" not in name and name in _GLOBAL_VALUE_FLAGS:
            i += 1  # its value
        i += 1
    return None


def _flag_value(args: Sequence[str], names: frozenset[str]) -> str | None:
    """The value of a Go-style flag (``-c X``, ``--config=X``...); the last one wins."""
    value = None
    i = 0
    while i < len(args) and args[i] != "--":
        name, equals, rest = args[i].lstrip("-").partition("=")
        if args[i].startswith("-") and name in names:
            if equals:
                value = rest
            elif i + 1 < len(args):
                value = args[i + 1]
                i += 1
        i += 1
    return value


def run_config(view: ProcessView, ident: RunnerIdentity) -> str | None:
    """The config ``view`` runs with (real path) if it is ``<executable> run``, else None."""
    start = _program_index(view, ident)
    if start is None:
        return None
    args = view.cmdline[start + 1:]
    command = _command_index(args)
    if command is None or args[command] != "run":
        return None
    config = _flag_value(args[command + 1:], _CONFIG_FLAGS) or view.config_env or ident.default_config
    return _resolve(config, view.cwd)


def is_runner(view: ProcessView, ident: RunnerIdentity) -> bool:
    return view.uid == ident.uid and run_config(view, ident) == ident.config


def find_runners(runner: RunnerPlan,
                 scan: Callable[[int], list[ProcessView]] | None = None) -> list[ProcessView]:
    """Every process of the runner's account running its executable with ``run`` on its config,
    oldest first. ``scan`` lists a uid's processes (default: ``processes_of``)."""
    ident = identity(runner)
    views = (scan or processes_of)(ident.uid)
    return sorted((v for v in views if is_runner(v, ident)), key=lambda v: v.create_time)


def _process(view: ProcessView) -> Any | None:
    """The psutil process of ``view`` if the pid still belongs to it (not reused since)."""
    import psutil

    try:
        proc = psutil.Process(view.pid)
        if abs(proc.create_time() - view.create_time) < 0.05:
            return proc
    except psutil.Error:
        pass
    return None


# ------------------------------------------------------------------------------------------
# Records: what siteboot started (runner.json), and operator stops


def read_record(runner: RunnerPlan) -> dict[str, Any]:
    try:
        data = json.loads(runner.record_path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(runner: RunnerPlan, record: dict[str, Any]) -> None:
    from siteboot.fsutil import atomic_write, ensure_private_dir

    ensure_private_dir(runner.state_dir)
    atomic_write(runner.record_path, json.dumps(record, indent=2) + "\n", mode=0o600)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def held(plan: Plan, runner: RunnerPlan) -> bool:
    """An operator drained or stopped it on purpose (and nobody revived it since): ``up`` and
    ``revive(respect_operator_stop=True)`` leave it stopped. Kept with the instance's other
    operator stops, under the program's name, in both modes."""
    from siteboot.records import operator_stops

    return RUNNER_PROGRAM in operator_stops(plan.instance(runner.instance))


def _hold(plan: Plan, runner: RunnerPlan, stopped: bool) -> None:
    from siteboot.records import mark_stopped

    mark_stopped(plan.instance(runner.instance), [RUNNER_PROGRAM], stopped=stopped)


def _held_detail(plan: Plan) -> str:
    return ("stopped on purpose (runner drain or stop, or siteboot stop): "
            f"`{command('runner revive', env=plan.env)}` starts it")


# ------------------------------------------------------------------------------------------
# Results


@dataclass
class RunnerStatus:
    site: str
    env: str
    mode: str
    instance: str
    user: str
    config: str
    state: str  # running, starting, stopped (on purpose), not running, not yours, unknown
    detail: str = ""
    instance_state: str | None = None  # supervised: the state of the instance's supervisord
    program_state: str | None = None  # supervised: supervisord's state of the runner program
    pids: list[int] = field(default_factory=list)
    uptime_s: int | None = None
    log: str | None = None
    problems: list[str] = field(default_factory=list)  # e.g. two runners on one config
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """Monitoring style: 0 running (or stopped on purpose); 1 starting, or a problem;
        2 not running; 3 unknown (also: another account's runner)."""
        severity = _SEVERITY.get(self.state, STATUS_UNKNOWN)
        if severity in (STATUS_OK, STATUS_WARNING) and self.problems:
            return STATUS_WARNING
        return severity

    def as_json(self) -> dict[str, Any]:
        return {"site": self.site, "env": self.env, "mode": self.mode, "instance": self.instance,
                "user": self.user, "config": self.config, "state": self.state,
                "ok": self.exit_code == STATUS_OK, "detail": self.detail,
                "instance_state": self.instance_state, "program_state": self.program_state,
                "pids": self.pids, "uptime_s": self.uptime_s, "log": self.log,
                "problems": self.problems, "notes": self.notes}


@dataclass
class RunnerOutcome:
    """What ``revive``, ``drain`` or ``stop`` did."""

    action: str  # started, already running, left stopped, drained, stopped, not running, failed
    detail: str = ""
    pids: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.action != "failed"

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAILED

    def as_json(self) -> dict[str, Any]:
        return {"action": self.action, "ok": self.ok, "detail": self.detail, "pids": self.pids,
                "notes": self.notes}


# ------------------------------------------------------------------------------------------
# status


def status(plan: Plan) -> RunnerStatus:
    """Whether the site's runner runs (``siteboot status`` may show this too: no psutil)."""
    runner = plan.require_runner()
    result = RunnerStatus(plan.site.name, plan.env, runner.mode, runner.instance, runner.user,
                          str(runner.config), UNKNOWN)
    elsewhere = plan.elsewhere(plan.instance(runner.instance))
    if elsewhere:
        result.state, result.detail = ELSEWHERE, f"{elsewhere}: ask there"
    elif runner.mode == "supervised":
        _supervised_status(plan, runner, result)
    elif plan.invoker != runner.user:
        result.state = NOT_YOURS
        result.detail = (f"owned by {runner.user}: run `{command('runner status', env=plan.env)}` "
                         f"as {runner.user}")
    else:
        _detached_status(plan, runner, result)
    return result


def _doubled(runner: RunnerPlan, views: list[ProcessView]) -> str:
    newer = " ".join(str(v.pid) for v in views[1:])
    return (f"{len(views)} runners use {runner.config}: pids {', '.join(str(v.pid) for v in views)}; "
            f"drain the newer ones: kill -QUIT {newer}")


def _detached_status(plan: Plan, runner: RunnerPlan, result: RunnerStatus) -> None:
    result.log = str(runner.log_path)
    try:
        views = find_runners(runner)
    except (SitebootError, OSError) as exc:
        result.detail = str(exc)
        return
    record = read_record(runner)
    result.pids = [v.pid for v in views]
    if views:
        result.state = RUNNING
        result.uptime_s = int(time.time() - views[0].create_time)
        if len(views) > 1:
            result.problems.append(_doubled(runner, views))
        if any(v.pid == record.get("pid") for v in views):
            result.detail = f"started by siteboot at {record.get('started_at')}"
        else:
            result.detail = "not started by siteboot (by hand?)"
    elif held(plan, runner):
        result.state, result.detail = STOPPED, _held_detail(plan)
    else:
        result.state = NOT_RUNNING
        result.detail = (f"no `{runner.executable} run` on {runner.config} runs as {runner.user}: "
                         f"`{command('runner revive', env=plan.env)}` starts one")
    if not views and record.get("pid"):
        result.notes.append(f"last started by siteboot at {record.get('started_at')} (pid "
                            f"{record['pid']}); see its log")


def _supervised_status(plan: Plan, runner: RunnerPlan, result: RunnerStatus) -> None:
    from siteboot.control import instance_status
    from siteboot.statusreport import NOT_ANSWERING, SHUTTING_DOWN
    from siteboot.statusreport import NOT_RUNNING as INSTANCE_DOWN
    from siteboot.statusreport import NOT_YOURS as INSTANCE_NOT_YOURS
    from siteboot.statusreport import RUNNING as INSTANCE_RUNNING

    inst = plan.instance(runner.instance)
    program = inst.program(RUNNER_PROGRAM)
    result.log = str(program.log_path(RUNNER_PROGRAM)) if program else None
    report = instance_status(plan, inst)
    result.instance_state = report.state
    row = next((p for p in report.programs if p.name == RUNNER_PROGRAM), None)
    if report.state == INSTANCE_NOT_YOURS:
        result.state, result.detail = NOT_YOURS, report.error or ""
    elif report.state in (INSTANCE_DOWN, NOT_ANSWERING, SHUTTING_DOWN):
        result.state = NOT_RUNNING
        result.detail = f"instance {inst.name} is {report.state}: {report.error}"
    elif report.state != INSTANCE_RUNNING or row is None:
        result.detail = f"instance {inst.name}: {report.state}: {report.error}"
    else:
        result.pids = [row.pid] if row.pid else []
        result.uptime_s = row.uptime_s
        result.program_state = row.state
        result.state = {"RUNNING": RUNNING, "STARTING": STARTING, "BACKOFF": STARTING}.get(
            row.state, NOT_RUNNING)
        result.detail = f"supervisord: {row.state}" + (f" ({row.spawnerr})" if row.spawnerr else "")
        if result.state == NOT_RUNNING and plan.owns(inst) and held(plan, runner):
            result.state = STOPPED
            result.notes.append(_held_detail(plan))
    if plan.invoker == runner.user and runner.resolved is not None:
        outside = [v for v in find_runners(runner) if v.pid not in result.pids]
        if outside:
            pids = [str(v.pid) for v in outside]
            result.problems.append(f"a runner outside supervisord also uses {runner.config}: pid "
                                   f"{', '.join(pids)}; drain it: kill -QUIT {' '.join(pids)}")


# ------------------------------------------------------------------------------------------
# revive


def _own_runner(plan: Plan, action: str) -> RunnerPlan:
    runner = plan.require_runner()
    elsewhere = plan.elsewhere(plan.instance(runner.instance))
    if elsewhere:
        raise SitebootError(f"the gitlab-runner of site {plan.site.name} runs {elsewhere} (its "
                            f"instance {runner.instance}), not on {plan.host}",
                            f"run `siteboot runner {action}` on {plan.instance(runner.instance).host}")
    if plan.invoker != runner.user:
        raise SitebootError(f"the gitlab-runner of site {plan.site.name} is owned by {runner.user}: "
                            f"run as {runner.user}",
                            f"e.g. `sudo -u {runner.user} siteboot runner {action}`")
    return runner


def revive(plan: Plan, respect_operator_stop: bool = False) -> RunnerOutcome:
    """Make the runner run, once: started when none runs, left alone when one does.

    ``respect_operator_stop`` (what ``siteboot revive`` passes): a runner an operator drained or
    stopped stays stopped; ``siteboot runner revive`` starts it and clears the mark.
    """
    runner = _own_runner(plan, "revive")
    if runner.mode == "supervised":
        return _revive_supervised(plan, runner, respect_operator_stop)
    from siteboot.fsutil import ensure_private_dir, flock

    ensure_private_dir(runner.state_dir)
    ensure_private_dir(runner.lock_path.parent)
    with flock(runner.lock_path, timeout=LOCK_TIMEOUT, what="the runner's lock"):
        views = find_runners(runner)
        if views:
            if not respect_operator_stop:
                _hold(plan, runner, False)
            notes = [_doubled(runner, views)] if len(views) > 1 else []
            return RunnerOutcome("already running", f"pid {views[0].pid}", [v.pid for v in views],
                                 notes)
        if respect_operator_stop and held(plan, runner):
            return RunnerOutcome("left stopped", _held_detail(plan))
        outcome = _start_detached(plan, runner)
        if outcome.ok:
            _hold(plan, runner, False)
        return outcome


def _exit_after_start(proc: Any) -> int | None:
    """The exit code of a runner that did not last ``START_GRACE``, else None. Its login
    preamble (``module load``) may take a while first: the grace counts once it is past it."""
    import psutil

    deadline = time.monotonic() + PREAMBLE_TIMEOUT
    while True:
        try:
            return int(proc.wait(timeout=START_GRACE))
        except psutil.TimeoutExpired:
            pass
        try:
            if not in_preamble(proc.cmdline()) or time.monotonic() > deadline:
                return None
        except psutil.Error:
            continue  # it exited meanwhile: the next wait says how


def _start_detached(plan: Plan, runner: RunnerPlan) -> RunnerOutcome:
    import psutil

    from siteboot.proc import clean_env, file_tail, start_detached, terminate_tree

    for path, what, fix in ((runner.config, "config", "register the runner first: "
                             f"gitlab-runner register --config {runner.config}"),
                            (runner.cwd, "working directory", "create it")):
        if not path.exists():
            return RunnerOutcome("failed", f"its {what} {path} does not exist: {fix}")
    assert runner.resolved is not None  # find_runners has checked
    argv = runner.argv(str(runner.resolved))
    with open(runner.log_path, "a", encoding="utf-8", opener=_private_opener) as log:
        log.write(f"--- {_now()} siteboot runner revive ({plan.invoker}): {' '.join(argv)}\n")
    try:
        pid = start_detached(wrap(plan.preamble(runner.user), argv), cwd=runner.cwd,
                             log=runner.log_path, env=clean_env())
    except OSError as exc:
        return RunnerOutcome("failed", f"cannot start {argv[0]}: {exc.strerror or exc}")
    proc = psutil.Process(pid)
    code = _exit_after_start(proc)
    if code is not None:
        return RunnerOutcome("failed", f"{argv[0]} exited with {code} right after its start; last "
                             f"lines of {runner.log_path}:\n" + _indent(file_tail(runner.log_path)))
    view = next((v for v in find_runners(runner) if v.pid == pid), None)
    if view is None:
        # Not findable again, so every revive would start one more: stop the one we started.
        command = " ".join(proc.cmdline())
        terminate_tree(proc)
        return RunnerOutcome("failed", f"started pid {pid}, but it runs as `{command}`, not as "
                             f"`{' '.join(argv)}`, so siteboot could not find it again; stopped it",
                             notes=["point [runner] executable at gitlab-runner itself, or at a "
                                    "script that stays its parent (no exec)"])
    _write_record(runner, {"mode": runner.mode, "pid": pid, "create_time": view.create_time,
                           "started_at": _now(), "argv": argv, "log": str(runner.log_path)})
    return RunnerOutcome("started", f"pid {pid}, log {runner.log_path}", [pid])


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in (text or "(empty)").splitlines())


def _revive_supervised(plan: Plan, runner: RunnerPlan, respect_operator_stop: bool) -> RunnerOutcome:
    from siteboot.control import control
    from siteboot.statusreport import RUNNING as INSTANCE_RUNNING

    current = status(plan)
    if current.program_state in ("RUNNING", "STARTING"):
        if not respect_operator_stop:
            _hold(plan, runner, False)
        return RunnerOutcome("already running", current.detail, current.pids, current.problems)
    if current.program_state == "BACKOFF":  # supervisord retries it already: say why it fails
        return RunnerOutcome("failed", f"{current.detail}; see {current.log}")
    if current.instance_state != INSTANCE_RUNNING:
        start = command("up", env=plan.env, instance=runner.instance)
        return RunnerOutcome("failed", f"{current.detail}; `{start}` starts the instance and its "
                             "runner")
    if current.problems:  # a runner outside supervisord: starting ours would make two
        return RunnerOutcome("failed", current.problems[0])
    if respect_operator_stop and held(plan, runner):
        return RunnerOutcome("left stopped", _held_detail(plan))
    result = control(plan, "start", [f"{runner.instance}:{RUNNER_PROGRAM}"]).outcomes[0]
    if not result.ok:
        return RunnerOutcome("failed", result.message)
    _hold(plan, runner, False)
    pids = status(plan).pids
    return RunnerOutcome("started", f"pid {', '.join(map(str, pids)) or '?'}, by supervisord of "
                         f"{runner.instance}", pids)


# ------------------------------------------------------------------------------------------
# drain and stop


def drain(plan: Plan, timeout: float | None = None, progress: Progress | None = None) -> RunnerOutcome:
    """GitLab's graceful shutdown: SIGQUIT (finish running jobs, take no new ones), then wait up
    to ``timeout`` (default ``drain_timeout``) and report whether it exited. Nothing is killed."""
    runner = _own_runner(plan, "drain")
    say = progress or (lambda _line: None)
    if runner.mode == "supervised":
        return _drain_supervised(plan, runner, timeout, say)
    import psutil

    from siteboot.proc import signal_process

    views = find_runners(runner)
    _hold(plan, runner, True)
    procs = [p for p in (_process(v) for v in views) if p is not None]
    if not procs:
        return RunnerOutcome("not running", f"no runner on {runner.config}")
    for proc in procs:
        signal_process(proc, signal.SIGQUIT)
    wait = runner.drain_timeout if timeout is None else timeout
    pids = [p.pid for p in procs]
    say(f"sent SIGQUIT to pid {', '.join(map(str, pids))}; waiting up to {wait:g} s for its "
        "running jobs to finish")
    gone, alive = psutil.wait_procs(procs, timeout=wait)
    if alive:
        still = ", ".join(str(p.pid) for p in alive)
        return RunnerOutcome("failed", f"pid {still} still running after {wait:g} s (jobs still "
                             f"running): wait longer, or `{command('runner stop', env=plan.env)}` "
                             "ends it now", pids)
    # wait_procs leaves the exit code on each process it saw go (None: not our child)
    codes = ", ".join(f"pid {p.pid}" + (f" exit {code}" if code is not None else "")
                      for p, code in ((p, getattr(p, "returncode", None)) for p in gone))
    return RunnerOutcome("drained", f"finished its jobs and exited ({codes})", pids)


def stop(plan: Plan, progress: Progress | None = None) -> RunnerOutcome:
    """Stop it now: SIGTERM (gitlab-runner aborts its jobs), SIGKILL after ``STOP_GRACE``."""
    runner = _own_runner(plan, "stop")
    say = progress or (lambda _line: None)
    if runner.mode == "supervised":
        return _stop_supervised(plan, runner, say)
    views = find_runners(runner)
    _hold(plan, runner, True)
    procs = [p for p in (_process(v) for v in views) if p is not None]
    if not procs:
        return RunnerOutcome("not running", f"no runner on {runner.config}")
    return _terminate(procs, say)


def _terminate(procs: list[Any], say: Progress) -> RunnerOutcome:
    from siteboot.proc import alive as proc_alive
    from siteboot.proc import terminate_tree

    pids = [p.pid for p in procs]
    say(f"sending SIGTERM to pid {', '.join(map(str, pids))} (SIGKILL after {STOP_GRACE:g} s)")
    for proc in procs:
        terminate_tree(proc, grace=STOP_GRACE)
    alive = [p.pid for p in procs if proc_alive(p)]
    if alive:
        return RunnerOutcome("failed", f"pid {', '.join(map(str, alive))} survived SIGKILL", pids)
    return RunnerOutcome("stopped", f"pid {', '.join(map(str, pids))}", pids)


def _drain_supervised(plan: Plan, runner: RunnerPlan, timeout: float | None,
                      say: Progress) -> RunnerOutcome:
    from siteboot.control import control

    if timeout is not None:
        raise UsageError("a supervised runner drains for its stopwaitsecs, which is "
                         f"drain_timeout ({runner.drain_timeout} s) in the rendered config",
                         f"change [runner] drain_timeout and run `{command('up', env=plan.env)}`, "
                         "or leave out --timeout")
    _hold(plan, runner, True)
    say(f"asking supervisord of {runner.instance} to stop {RUNNER_PROGRAM} with SIGQUIT; it waits "
        f"up to {runner.drain_timeout} s for running jobs")
    result = control(plan, "stop", [f"{runner.instance}:{RUNNER_PROGRAM}"]).outcomes[0]
    if not result.ok:
        return RunnerOutcome("failed", result.message)
    if result.message == "already stopped":
        return RunnerOutcome("not running", f"supervisord of {runner.instance}: already stopped")
    return RunnerOutcome("drained", f"supervisord of {runner.instance}: {result.message}")


def _stop_supervised(plan: Plan, runner: RunnerPlan, say: Progress) -> RunnerOutcome:
    """supervisord stops it (so that it does not restart it) while we SIGTERM the process: its
    own stop signal is QUIT, which would wait for the jobs."""
    from siteboot.control import FAULT_NOT_RUNNING
    from siteboot.rpc import Fault, connect

    inst = plan.instance(runner.instance)
    full = inst.address(RUNNER_PROGRAM)
    endpoint = connect(plan, inst, timeout=30.0)
    _hold(plan, runner, True)
    try:
        info = endpoint.call("supervisor.getProcessInfo", full)
        endpoint.call("supervisor.stopProcess", full, False)
    except Fault as fault:
        if fault.faultCode == FAULT_NOT_RUNNING:
            return RunnerOutcome("not running", f"supervisord of {inst.name}: already stopped")
        return RunnerOutcome("failed", f"supervisord of {inst.name}: {fault.faultString}")
    if not info["pid"]:  # BACKOFF: no process to signal
        return RunnerOutcome("stopped", f"supervisord of {inst.name}: it was {info['statename']}, "
                             f"now {_wait_stopped(endpoint, full)}")
    view = next((v for v in find_runners(runner) if v.pid == info["pid"]), None)
    proc = _process(view) if view is not None else None
    outcome = _terminate([proc], say) if proc is not None else RunnerOutcome(
        "stopped", f"supervisord of {inst.name} stops it (pid {info['pid']} is not identifiable "
        "as the runner: not signalled)")
    if outcome.ok:
        state = _wait_stopped(endpoint, full)
        outcome.notes.append(f"supervisord of {inst.name}: {state}")
    return outcome


def _wait_stopped(endpoint: Any, full: str, timeout: float = 10.0) -> str:
    """supervisord's state of ``full`` once it has noticed the exit (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        state = str(endpoint.call("supervisor.getProcessInfo", full)["statename"])
        if state != "STOPPING" or time.monotonic() > deadline:
            return state
        time.sleep(0.1)
