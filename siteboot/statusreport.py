"""What ``status`` reports: its result types, the rows it makes of supervisord's answer, and the
monitoring verdict.

Standard library only and no dataclasses: the full status (``control.status``, from a ``Plan``)
and the quick one (``quickstatus``, from the plan cache's digest, without loading the model)
build the same objects with the same functions, and print them the same way.
"""

from __future__ import annotations

import json
import os

from siteboot.errors import STATUS_CRITICAL, STATUS_OK, STATUS_UNKNOWN, STATUS_WARNING
from siteboot.history import History, clock_offset, history, parse_events
from siteboot.plain import Plain

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

# How supervisord cannot be reached (``rpc.RpcError.reason``)
NOT_RUNNING = "not running"
NOT_ANSWERING = "not answering"

# Instance states beyond those
RUNNING = "running"
NO_KEY = "no key"
NOT_YOURS = "not yours"  # another user's instance that grants no group: nothing to monitor
ELSEWHERE = "elsewhere"  # placed on another host: not asked from here, not counted
ERROR = "error"  # could not be asked (an unreadable runtime dir, an unknown user): unknown
SHUTTING_DOWN = "shutting down"
RUNTIME_LOST = "running (runtime dir lost)"
ORPHANED = "orphaned"  # running, recorded as started by this account, no longer in the site

# A supervisord that does not answer, or is going away, runs nothing a monitor can count on.
_SEVERITY_OF_INSTANCE = {RUNNING: STATUS_OK, NOT_YOURS: STATUS_OK, ELSEWHERE: STATUS_OK,
                         RUNTIME_LOST: STATUS_WARNING,
                         ORPHANED: STATUS_WARNING,
                         NOT_RUNNING: STATUS_CRITICAL,
                         NOT_ANSWERING: STATUS_CRITICAL, SHUTTING_DOWN: STATUS_CRITICAL}
_PROGRAM_WARNING = {"STARTING", "BACKOFF"}
_PROGRAM_BAD = {"FATAL", "EXITED", "STOPPED", "STOPPING", "UNKNOWN", "NOT LOADED"}
# No exit to show: running, or stopped on request (supervisord's -1 is its stop signal).
_NO_EXIT_STATUS = {"RUNNING", "STARTING", "STOPPING", "STOPPED"}
# A process in these states may be failing because something else holds its port: the full
# status adds its port holder (and, FATAL or BACKOFF, its log tail) to its row.
FAILING = frozenset({"BACKOFF", "FATAL", "EXITED"})
# An instance in one of these states was never started here (or cannot be seen to run).
_UNUSED = {NOT_RUNNING, NO_KEY, NOT_YOURS, ERROR, ELSEWHERE}


class LogTail(Plain):
    """The last lines a failing process wrote where its errors go."""

    __slots__ = ("lines", "stream")

    def __init__(self, stream: str, lines: list[str]) -> None:
        self.stream = stream  # "stderr", or "stdout" for a program with redirect_stderr
        self.lines = lines

    def as_json(self) -> dict[str, Any]:
        return {"stream": self.stream, "lines": self.lines}


class ProgramStatus(Plain):
    """One process as its supervisord reports it, with what siteboot adds (expected, history,
    health)."""

    __slots__ = (
        "exitstatus",
        "expected",
        "group",
        "health",
        "history",
        "log_tail",
        "name",
        "pid",
        "restart_limit",
        "spawnerr",
        "state",
        "uptime_s",
    )

    def __init__(self, name: str, group: str, state: str, pid: int | None,
                 uptime_s: int | None, exitstatus: int | None, spawnerr: str, expected: bool,
                 history: History | None = None, restart_limit: int | None = None,
                 log_tail: LogTail | None = None, health: Any = None) -> None:
        self.name = name
        self.group = group
        self.state = state
        self.pid = pid
        self.uptime_s = uptime_s
        self.exitstatus = exitstatus
        self.spawnerr = spawnerr
        self.expected = expected  # should be running (autostart)
        self.history = history  # restarts from supervisord's log; None: not counted
        self.restart_limit = restart_limit  # more restarts than this in the window: a crash loop
        self.log_tail = log_tail  # FATAL or BACKOFF: the end of its error output
        self.health = health  # a ``health.Health`` where a healer watches (probes, restarts)

    @property
    def health_state(self) -> str:
        """ready, not ready or unknown; without a healer's record: ready once RUNNING."""
        if self.health is not None:
            return str(self.health.state)
        return "ready" if self.state == "RUNNING" else "not ready"

    @property
    def unhealthy(self) -> bool:
        """RUNNING, but its ready probe fails."""
        return self.state == "RUNNING" and self.health_state == "not ready"

    @property
    def restarts(self) -> int | None:
        return self.history.restarts if self.history else None

    @property
    def crash_looping(self) -> bool:
        return (self.history is not None and self.restart_limit is not None
                and self.history.restarts > self.restart_limit)

    @property
    def severity(self) -> int:
        own = self._state_severity()
        return worst([own, STATUS_WARNING]) if self.crash_looping or self.unhealthy else own

    def _state_severity(self) -> int:
        if self.state == "RUNNING":
            return STATUS_OK
        if self.state in _PROGRAM_WARNING:
            return STATUS_WARNING
        if self.state == "FATAL" or (self.expected and self.state in _PROGRAM_BAD):
            return STATUS_CRITICAL
        return STATUS_OK

    def as_json(self) -> dict[str, Any]:
        last_exit = self.history.last_exit if self.history else None
        return {"name": self.name, "group": self.group, "state": self.state, "pid": self.pid,
                "uptime_s": self.uptime_s, "exitstatus": self.exitstatus, "spawnerr": self.spawnerr,
                "restarts": self.restarts, "last_exit": last_exit.as_json() if last_exit else None,
                "log_tail": self.log_tail.as_json() if self.log_tail else None,
                "health": self.health_state,
                "health_detail": (self.health.detail or None) if self.health is not None else None,
                "backoff": self.health.backoff_json() if self.health is not None else None}


class InstanceStatus(Plain):
    """One instance: whether it answers, and its processes."""

    __slots__ = ("error", "host", "name", "pid", "programs", "state", "url", "user")

    def __init__(self, name: str, user: str, state: str, url: str, pid: int | None = None,
                 error: str | None = None, programs: list[ProgramStatus] | None = None,
                 host: str | None = None) -> None:
        self.name = name
        self.user = user
        self.state = state
        self.url = url
        self.pid = pid
        self.error = error
        self.programs: list[ProgramStatus] = [] if programs is None else programs
        self.host = host  # as the site places it; None: any host

    @property
    def severity(self) -> int:
        own = _SEVERITY_OF_INSTANCE.get(self.state, STATUS_UNKNOWN)
        return worst([own, *(p.severity for p in self.programs)])

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "user": self.user, "state": self.state, "pid": self.pid,
                "url": self.url, "error": self.error, "host": self.host,
                "programs": [p.as_json() for p in self.programs]}


def elsewhere(name: str, user: str, http_url: str, host: str | None) -> InstanceStatus:
    """The row of an instance placed on another host: listed, not asked (its port here is not
    its port)."""
    return InstanceStatus(name, user, ELSEWHERE, http_url, host=host)


def worst(severities: Iterable[int]) -> int:
    """Monitoring order: CRITICAL over UNKNOWN over WARNING over OK."""
    found = set(severities)
    for level in (STATUS_CRITICAL, STATUS_UNKNOWN, STATUS_WARNING):
        if level in found:
            return level
    return STATUS_OK


class VenvProblem(Plain):
    """A venv whose interpreter moved or vanished: what runs on it will not start again."""

    __slots__ = ("problem", "programs", "venv")

    def __init__(self, venv: str, programs: list[str], problem: str) -> None:
        self.venv = venv  # its path ("the tool venv" is siteboot's own)
        self.programs = programs  # the programs that use it
        self.problem = problem

    def as_json(self) -> dict[str, Any]:
        return {"venv": self.venv, "programs": self.programs, "problem": self.problem}


class StatusResult(Plain):
    """``status`` of one env: every instance asked, and the venvs whose interpreter moved."""

    __slots__ = ("env", "instances", "runner", "site", "venv_problems")

    def __init__(self, site: str, env: str, instances: list[InstanceStatus],
                 runner: Any | None = None,
                 venv_problems: list[VenvProblem] | None = None) -> None:
        self.site = site
        self.env = env
        self.instances = instances
        self.runner = runner  # the site's detached gitlab-runner (a ``runner.RunnerStatus``)
        self.venv_problems: list[VenvProblem] = [] if venv_problems is None else venv_problems

    @property
    def exit_code(self) -> int:
        runner = [] if self.runner is None or self.runner.state in (NOT_YOURS, ELSEWHERE) \
            else [self.runner.exit_code]
        venvs = [STATUS_WARNING] if self.venv_problems else []
        return worst([i.severity for i in self.instances] + runner + venvs)

    def as_json(self) -> dict[str, Any]:
        data = {"site": self.site, "env": self.env, "ok": self.exit_code == STATUS_OK,
                "instances": [i.as_json() for i in self.instances]}
        if self.runner is not None:
            data["runner"] = self.runner.as_json()
        if self.venv_problems:
            data["venv_problems"] = [v.as_json() for v in self.venv_problems]
        return data


def in_use(report: StatusResult) -> bool:
    """Does some instance of this env run (or at least answer)?"""
    return any(row.state not in _UNUSED for row in report.instances)


class SiteStatus(Plain):
    """``status --all-envs``: one report per env that is in use."""

    __slots__ = ("reports", "site")

    def __init__(self, site: str, reports: list[StatusResult]) -> None:
        self.site = site
        self.reports = reports

    @property
    def exit_code(self) -> int:
        return worst([r.exit_code for r in self.reports])

    def as_json(self) -> dict[str, Any]:
        return {"site": self.site, "ok": self.exit_code == STATUS_OK,
                "envs": [r.as_json() for r in self.reports]}


def unreachable(row: InstanceStatus, reason: str, message: str, env: str, owned: bool,
                lost_socket: str | None = None) -> None:
    """Say in ``row`` why its supervisord could not be asked (``reason``: an ``RpcError``'s),
    with the command that helps; ``lost_socket``: the socket path was gone, ``row.url`` is its
    port."""
    from siteboot.hints import command

    row.state, row.error = reason, message
    if reason == NOT_RUNNING and lost_socket is not None:
        row.error = (f"no socket at {lost_socket} and nothing answers at {row.url}; "
                     f"run `{command('revive', env=env)}`")
    elif reason == NOT_RUNNING and owned:
        row.error = f"nothing is listening at {row.url}; run `{command('up', env=env)}`"


# ------------------------------------------------------------------------------------------
# rows from supervisord's answer

def program_rows(processes: Sequence[Sequence[Any]], infos: list[dict[str, Any]],
                 fill_missing: bool = True, held: Iterable[str] = (),
                 main_log: str | None = None) -> list[ProgramStatus]:
    """The rows of ``getAllProcessInfo``'s ``infos``, for the ``processes`` the site expects
    (``(process, program, autostart, window_s, restart_limit)``). ``held``: processes an
    operator stopped on purpose: not expected to run. ``main_log``: the end of supervisord's
    log, where restarts are counted. ``fill_missing``: an expected process supervisord does
    not have is a NOT LOADED row."""
    held = set(held)
    by_process = {entry[0]: entry for entry in processes}
    events = parse_events(main_log) if main_log is not None else {}
    offset = clock_offset(events, infos)
    rows = []
    seen = set()
    for info in infos:
        planned = by_process.get(info["name"])
        seen.add(info["name"])
        running = info["statename"] == "RUNNING"
        window = int(planned[3]) if planned else 0
        counted = main_log is not None and window > 0
        rows.append(ProgramStatus(
            name=info["name"], group=info["group"], state=info["statename"],
            pid=info["pid"] or None,
            uptime_s=int(info["now"] - info["start"]) if running and info["start"] else None,
            exitstatus=None if info["statename"] in _NO_EXIT_STATUS else info["exitstatus"],
            spawnerr=info.get("spawnerr", "") or "",
            expected=(bool(planned[2]) if planned else True) and info["name"] not in held,
            history=history(events.get(info["name"], []), info["now"], window, offset)
            if counted else None,
            restart_limit=int(planned[4]) if planned else None,
        ))
    for process, program, autostart, _window, _limit in processes if fill_missing else ():
        if process not in seen:
            rows.append(ProgramStatus(process, program, "NOT LOADED", None, None, None,
                                      "in the site file but not in the running supervisord; "
                                      "restart the instance to load it", bool(autostart)))
    return rows


def add_health(rows: Iterable[ProgramStatus], health_path: str, probed: dict[str, bool]) -> None:
    """Probe results and restart attempts of the processes in ``probed`` (process -> whether it
    has a ready probe), as the instance's healer recorded them at ``health_path`` (``status``
    probes nothing itself: one request per instance stays all it costs)."""
    import time
    from pathlib import Path

    from siteboot.health import health_of, read

    records = read(Path(health_path))  # not the owner: unreadable, so health is unknown
    now = time.time()
    for row in rows:
        if row.name in probed:
            row.health = health_of(probed[row.name], row.state, row.pid, records.get(row.name),
                                   now)


def describes(started_as: Sequence[Any], record: dict[str, Any]) -> bool:
    """Does an instance as the site describes it now (``records.started_as``: runtime dir,
    port or None when unknown, state dir, user) match the start record ``record`` (its JSON)?"""
    runtime_dir, port, state_dir, user = started_as
    return bool(record.get("runtime_dir") == runtime_dir
                and (port is None or record.get("port") == port)
                and record.get("state_dir") == state_dir and record.get("user") == user)


def read_held(path: str | os.PathLike[str]) -> set[str]:
    """The processes an operator stopped on purpose, as ``records.mark_stopped`` wrote them to
    ``path`` (none when it is missing or unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return set()
    return {str(p) for p in data} if isinstance(data, list) else set()


def venv_problems(app_venvs: Iterable[Iterable[Sequence[Any]]]) -> list[VenvProblem]:
    """The tool venv (of the checkout siteboot runs from) and the app venvs whose interpreter
    moved or vanished (a module upgrade): found with stat alone, nothing is started.
    ``app_venvs``: for each instance, (venv, the programs using it)."""
    from pathlib import Path

    from siteboot.bootstrap.locate import STAMP_NAME, find_checkout, tool_venv_path
    from siteboot.interpreters import APP_VENV_STAMP, stamped_moved

    problems: list[VenvProblem] = []
    checkout = find_checkout()
    if checkout is not None:
        tool = tool_venv_path(checkout)
        why = stamped_moved(tool, STAMP_NAME)
        if why:
            problems.append(VenvProblem(str(tool), [], f"the tool venv: {why}; `python3 -m "
                                        "siteboot init` rebuilds it"))
    using: dict[str, list[str]] = {}
    for per_instance in app_venvs:
        for venv, programs in per_instance:
            using.setdefault(str(venv), []).extend(programs)
    for venv, programs in using.items():
        why = stamped_moved(Path(venv), APP_VENV_STAMP)
        if why:
            problems.append(VenvProblem(str(venv), list(programs), f"{why}; `siteboot init` rebuilds it"))
    return problems
