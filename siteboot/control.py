"""The supervisorctl wrapper: status, start/stop/restart, tail, ctl.

Imports stay light (no psutil, jinja2, virtualenv or supervisor): this is the hot path.
Instances are queried concurrently, each in one multicall request.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from siteboot import statusreport
from siteboot.concurrency import concurrently
from siteboot.errors import (
    EXIT_FAILED,
    EXIT_OK,
    STATUS_OK,
    STATUS_WARNING,
    KeyAccessError,
    SitebootError,
    UsageError,
    did_you_mean,
)
from siteboot.hints import command
from siteboot.history import MAIN_LOG_TAIL
from siteboot.plan import InstancePlan, Plan, ProgramPlan, Selection
from siteboot.progress import SILENT, Reporter
from siteboot.rpc import (
    FAULT_SHUTDOWN_STATE,
    Endpoint,
    Fault,
    RpcError,
    connect,
    status_calls,
    url_to,
)
from siteboot.statusreport import (
    _PROGRAM_WARNING,
    ERROR,
    FAILING,
    NO_KEY,
    NOT_RUNNING,
    NOT_YOURS,
    ORPHANED,
    RUNNING,
    RUNTIME_LOST,
    SHUTTING_DOWN,
    InstanceStatus,
    LogTail,
    ProgramStatus,
    StatusResult,
    VenvProblem,
    add_health,
    elsewhere,
    program_rows,
    unreachable,
)

# supervisor.xmlrpc.Faults
FAULT_BAD_NAME = 10
FAULT_NO_FILE = 20
FAULT_ALREADY_STARTED = 60
FAULT_NOT_RUNNING = 70
# the process died before supervisord looked: where it lands (BACKOFF, FATAL) says more
FAULT_SPAWN_ERROR = 50


# A process in these states failed to start: its own words say why (``log_tails``).
FAILING_TO_START = {"FATAL", "BACKOFF"}
LOG_TAIL_LINES = 5
_LOG_TAIL_BYTES = 4096  # over RPC: enough for LOG_TAIL_LINES lines of a traceback
_LOG_LINE_WIDTH = 200
# What a log line must not bring to the operator's terminal: colours, cursor moves, controls.
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


def instance_status(plan: Plan, inst: InstancePlan) -> InstanceStatus:
    """One instance's report; whatever keeps it from being asked is its own error, never the
    whole report's (a monitor must get a document for the others). One placed on another host
    is listed, not asked: its port here is not its port."""
    if not inst.here:
        return elsewhere(inst.name, inst.user, inst.http_url, inst.host)
    try:
        report = _query(plan, inst)
    except (SitebootError, OSError) as exc:
        detail = str(exc) if isinstance(exc, SitebootError) else f"{type(exc).__name__}: {exc}"
        report = InstanceStatus(inst.name, inst.user, ERROR, plan.url_for(inst), error=detail)
    report.host = inst.host
    return report


def _query(plan: Plan, inst: InstancePlan) -> InstanceStatus:
    owned = plan.owns(inst)
    url = url_to(plan, inst)
    socket_lost = url != plan.url_for(inst)
    result = InstanceStatus(inst.name, inst.user, RUNNING, url)
    try:
        endpoint = connect(plan, inst)
    except KeyAccessError as exc:
        if owned and not inst.socket_path.exists():
            result.state, result.error = NOT_RUNNING, (f"no socket at {inst.socket_path}; run "
                                                       f"`{command('up', env=plan.env)}`")
        elif not owned and not inst.group:
            result.state, result.error = NOT_YOURS, f"owned by {inst.user}, no grant: run as {inst.user}"
        else:
            result.state, result.error = NO_KEY, str(exc)
        return result
    try:  # the restart count (the main log's end) comes in the same request
        state, pid, infos, *log = endpoint.multicall(status_calls(inst))
        if log and isinstance(log[0], Fault):
            log = [_read_main_log_again(endpoint, log[0])]
    except RpcError as exc:
        unreachable(result, exc.reason, str(exc), plan.env, owned,
                    lost_socket=str(inst.socket_path) if socket_lost else None)
        return result
    if socket_lost:  # it serves, but its runtime files are gone (a /tmp cleaner)
        if os.path.isdir(inst.runtime_dir):
            result.error = (f"its control socket was lost; siteboot uses {url} until its next "
                            "restart")
        else:
            result.state = RUNTIME_LOST
            result.error = (f"runtime dir {inst.runtime_dir} is gone while it runs; "
                            f"`{command('revive', env=plan.env)}` restores it without restarting "
                            "programs")
    if isinstance(state, Fault) or state.get("statename") != "RUNNING":
        # in its shutdown, supervisord answers every call with the SHUTDOWN_STATE fault
        going = not isinstance(state, Fault) or state.faultCode == FAULT_SHUTDOWN_STATE
        result.state = SHUTTING_DOWN if going else "unknown"
        result.error = f"supervisord state: {state}"
    result.pid = pid if isinstance(pid, int) else None
    loaded = isinstance(infos, list)
    # a supervisord going away answers with a fault: its programs are not "not loaded"
    from siteboot.records import operator_stops

    result.programs = _programs(inst, infos if loaded else [],
                                fill_missing=loaded and result.state != SHUTTING_DOWN,
                                held=operator_stops(inst) if owned else set(),
                                main_log=log[0] if log and isinstance(log[0], str) else None)
    for row in result.programs:
        if row.state in FAILING:
            row.spawnerr = _with_port_holder(inst, row.name, row.spawnerr)
    failing = [row.name for row in result.programs if row.state in FAILING_TO_START]
    if failing:  # only then: a healthy status reads no log
        tails = log_tails(plan, inst, endpoint, failing)
        for row in result.programs:
            row.log_tail = tails.get(row.name)
    if inst.heals:
        _add_health(inst, result.programs)
    return result


def _add_health(inst: InstancePlan, rows: list[ProgramStatus]) -> None:
    """Probe results and restart attempts, as the instance's healer recorded them (``status``
    probes nothing itself: one request per instance stays all it costs)."""
    add_health(rows, str(inst.health_path), probe_table(inst))


def probe_table(inst: InstancePlan) -> dict[str, bool]:
    """Whether each process of ``inst`` has a ready probe (``statusreport.add_health``)."""
    return {process: program.probe is not None
            for program in inst.programs for process in program.process_names()}


def _program_of(inst: InstancePlan, process: str) -> ProgramPlan | None:
    return next((p for p in inst.programs if process in p.process_names()), None)


def log_tails(plan: Plan, inst: InstancePlan, endpoint: Endpoint,
              processes: list[str]) -> dict[str, LogTail]:
    """The last lines each of ``processes`` wrote to stderr (to stdout, with ``redirect_stderr``):
    the owner reads the log file, anyone else (a granted member) asks supervisord."""
    from siteboot.proc import file_tail

    tails: dict[str, LogTail] = {}
    for process in processes:
        program = _program_of(inst, process)
        if program is None:
            continue
        stream = "stdout" if program.options.get("redirect_stderr") else "stderr"
        if plan.owns(inst):  # supervisord writes it as the owner: no need to ask it
            text = file_tail(program.log_path(process, stream), 10 * LOG_TAIL_LINES)
        else:
            try:
                text, _size = tail_end(endpoint, inst.address(process),
                                       stream.capitalize(), _LOG_TAIL_BYTES)
            except (SitebootError, Fault):  # not readable: nothing to show
                continue
        lines = _collapsed(_TERMINAL_CODES.sub("", line)[:_LOG_LINE_WIDTH].rstrip()
                           for line in text.splitlines())
        if lines:
            tails[process] = LogTail(stream, lines[-LOG_TAIL_LINES:])
    return tails


def _collapsed(lines: Iterable[str]) -> list[str]:
    """Non-blank ``lines``, a run of the same line once (a program that fails the same way at
    each of its start retries says so once)."""
    runs: list[list[Any]] = []
    for line in lines:
        if not line.strip():
            continue
        if runs and runs[-1][0] == line:
            runs[-1][1] += 1
        else:
            runs.append([line, 1])
    return [line if count == 1 else f"{line}  [{count} times]" for line, count in runs]


def failing_tails(plan: Plan, inst: InstancePlan, endpoint: Endpoint,
                  states: dict[str, str]) -> dict[str, LogTail]:
    """``log_tails`` of the processes that ``states`` (process -> state) says are FATAL or
    BACKOFF."""
    return log_tails(plan, inst, endpoint,
                     [process for process, state in states.items() if state in FAILING_TO_START])


def _read_main_log_again(endpoint: Endpoint, fault: Fault) -> str | Fault:
    """supervisord decodes the tail it sends as UTF-8: a tail that begins inside a character
    fails. One of the next three starting points is a character's start."""
    if "UnicodeDecodeError" not in fault.faultString:
        return fault  # no main log (NO_FILE): nothing to count
    for text in endpoint.multicall([("supervisor.readLog", (-MAIN_LOG_TAIL - extra, 0))
                                    for extra in (1, 2, 3)]):
        if isinstance(text, str):
            return text
    return fault


def _with_port_holder(inst: InstancePlan, process: str, message: str) -> str:
    """``message``, plus who holds the process's port when a process outside the site does."""
    program = _program_of(inst, process)
    if program is None or not program.port:  # none, or an auto one not allocated yet
        return message
    from siteboot.ports import foreign_holder  # psutil: only when something is failing

    holder = foreign_holder(program.port, {str(inst.conf_path)})
    return f"{message}; {holder}" if holder and message else (holder or message)


def process_table(inst: InstancePlan) -> list[tuple[str, str, bool, int, int]]:
    """What ``status`` expects of ``inst`` (``statusreport.program_rows``): (process, program,
    autostart, crash loop window, restarts allowed in it) of each process, in site order."""
    return [(process, program.name, program.autostart,
             int(program.options["crash_loop_window"]),
             int(program.options["crash_loop_restarts"]))
            for program in inst.programs for process in program.process_names()]


def _programs(inst: InstancePlan, infos: list[dict[str, Any]], fill_missing: bool = True,
              held: set[str] | frozenset[str] = frozenset(),
              main_log: str | None = None) -> list[ProgramStatus]:
    return program_rows(process_table(inst), infos, fill_missing, held, main_log)


def status(plan: Plan, instance: Selection = None, names: Sequence[str] = ()) -> StatusResult:
    """The instances selected (all by default) and, with ``names``, only the processes named
    (``resolve_targets``), with their instances."""
    insts = plan.select(instance)
    wanted = resolve_targets(plan, names) if names else None
    if wanted is not None:
        insts = [inst for inst in insts if inst.name in wanted]
        if not insts:
            raise UsageError(f"{' '.join(names)}: not in instance "
                             f"{', '.join(i.name for i in plan.select(instance))}")
    rows = concurrently(lambda inst: instance_status(plan, inst), insts)
    if wanted is not None:
        for row in rows:
            row.programs = [p for p in row.programs if p.name in wanted[row.name]]
    elif not instance:
        rows += orphaned_rows(plan)
    return StatusResult(plan.site.name, plan.env, rows, venv_problems=venv_problems(plan, insts))


def venv_problems(plan: Plan, insts: list[InstancePlan]) -> list[VenvProblem]:
    """The tool venv and the app venvs of the invoker's programs here whose interpreter moved
    or vanished (``statusreport.venv_problems``)."""
    return statusreport.venv_problems([instance_venvs(plan, inst) for inst in insts])


def instance_venvs(plan: Plan, inst: InstancePlan) -> list[tuple[str, list[str]]]:
    """(venv, the programs running on it) of ``inst``'s programs, when they are the invoker's
    and placed here (nobody else's venvs are checked), in site order."""
    using: dict[str, list[str]] = {}
    if plan.owns(inst) and inst.here:
        for program in inst.programs:
            if program.venv is not None:
                using.setdefault(str(program.venv), []).append(program.name)
    return list(using.items())


def status_digest(plan: Plan) -> dict[str, Any]:
    """What ``quickstatus`` needs to make ``status``'s report of ``plan`` without the model, as
    plain values (the plan cache keeps it beside the plan). An instance is ``quick`` when its
    report comes from its supervisord's answer and files it may read: here, and the invoker's or
    granted to a group (its key in ``shared_key``). One placed on another host is listed, not
    asked (``instance_status``)."""
    from siteboot.records import records_dir, started_as, stops_path

    runner = plan.runner
    return {
        "site": plan.site.name, "env": plan.env, "host": plan.host,
        "records": str(records_dir(plan.invoker)),
        "detached_runner": runner.instance if runner is not None and runner.mode == "detached"
        else None,
        "instances": [{
            "name": inst.name, "user": inst.user, "host": inst.host,
            **_reached_as(plan, inst), "here": inst.here, "http_url": inst.http_url,
            "health": str(inst.health_path) if inst.heals else None,
            "probed": probe_table(inst),
            "url": plan.url_for(inst), "socket": str(inst.socket_path), "key": str(inst.key_path),
            "calls": status_calls(inst),
            "stops": str(stops_path(inst)) if plan.owns(inst) else None,
            "started_as": started_as(inst),
            "processes": process_table(inst), "venvs": instance_venvs(plan, inst),
        } for inst in plan.instances.values()],
    }


def _reached_as(plan: Plan, inst: InstancePlan) -> dict[str, Any]:
    """How the quick status reaches ``inst`` (``status_digest``): whether it may (``quick``), as
    its owner or with the key granted to its group (anyone else's is the full status's to say)."""
    owned = plan.owns(inst)
    granted = bool(inst.group and inst.shared_key_path)
    return {"quick": inst.here and (owned or granted), "owned": owned, "group": inst.group,
            "shared_key": str(inst.shared_key_path) if granted else None}


def orphaned_rows(plan: Plan) -> list[InstanceStatus]:
    """Supervisords this account started for the site and env that the site no longer describes
    (an instance removed, its runtime_dir or port changed): still running, and watched by nobody."""
    from siteboot.records import is_running, orphaned

    try:
        drifted = orphaned(plan)
    except OSError:  # the records are a convenience: never what keeps a monitor from a verdict
        return []

    rows = []
    for record in drifted:
        if is_running(record):
            rows.append(InstanceStatus(
                record.instance, record.user, ORPHANED, record.instance_plan().unix_url,
                pid=record.pid, error=f"started from {record.site_path} with runtime dir "
                f"{record.runtime_dir}, no longer in the site: run "
                f"`{command('down', '--orphans', env=plan.env)}`"))
    return rows


# ------------------------------------------------------------------------------------------
# start / stop / restart


@dataclass
class ProcessOutcome:
    """What ``start``, ``stop`` or ``restart`` did to one process."""

    instance: str
    process: str
    ok: bool
    message: str
    log_tail: LogTail | None = None  # it did not start (FATAL, BACKOFF): the end of its log

    def as_json(self) -> dict[str, Any]:
        return {"instance": self.instance, "process": self.process, "ok": self.ok,
                "message": self.message,
                "log_tail": self.log_tail.as_json() if self.log_tail else None}


@dataclass
class ControlResult:
    """What ``start``, ``stop`` or ``restart`` did to each process; failed if any did not get there."""

    outcomes: list[ProcessOutcome]

    @property
    def exit_code(self) -> int:
        return EXIT_OK if all(o.ok for o in self.outcomes) else EXIT_FAILED

    def as_json(self) -> list[dict[str, Any]]:
        return [o.as_json() for o in self.outcomes]


def supervisor_group(inst: InstancePlan, program: ProgramPlan) -> str:
    """The group supervisord keeps ``program``'s processes in: the ``GROUP`` of the
    ``GROUP:PROCESS`` names that ``supervisorctl`` and ``status --json`` show. Every program
    is a group of its own (``InstancePlan.address``)."""
    return inst.address(program.process_names()[0]).partition(":")[0]


def resolve_targets(plan: Plan, names: Sequence[str]) -> dict[str, list[str]]:
    """Names as ``status`` prints them, and as supervisord does, → {instance: [process names]}.

    ``all`` (what the invoker may control: its own and granted instances), an instance, a
    program, a process (``worker_01``), ``instance:program``, ``instance:process``,
    ``instance:*``, and supervisord's ``group:process`` and ``group:*``.
    """
    targets: dict[str, list[str]] = {}
    for name in names:
        for inst, process in _named(plan, name):
            bucket = targets.setdefault(inst.name, [])
            if process not in bucket:
                bucket.append(process)
    return targets


def _named(plan: Plan, name: str) -> list[tuple[InstancePlan, str]]:
    """The processes one name stands for, in site order."""
    every = [(inst, program) for inst in plan.instances.values() for program in inst.programs]
    if name == "all":
        return [(inst, process) for inst, program in every
                if inst.here and (plan.owns(inst) or inst.group)
                for process in program.process_names()]
    prefix, colon, rest = name.partition(":")
    if colon:  # an instance's name first; else supervisord's group
        scope = [(inst, program) for inst, program in every if inst.name == prefix] or \
            [(inst, program) for inst, program in every if supervisor_group(inst, program) == prefix]
        if not scope:
            plan.instance(prefix)  # not an instance with programs, nor a group: its error
        found = _processes_named(scope, rest)
        if not found and rest != "*":
            where = f"instance {prefix}" if prefix in plan.instances else f"group {prefix}"
            raise UsageError(f"{where} has no program '{rest}'",
                             f"programs: {', '.join(p.name for _, p in scope) or 'none'}")
        return found
    found = _processes_named(every, name) if name != "*" else []
    if name in plan.instances:
        if found:
            inst = found[0][0].name
            raise UsageError(f"'{name}' is both an instance and a program",
                             f"say `{name}:*` for the instance, `{inst}:{name}` for the program")
        return _processes_named([(i, p) for i, p in every if i.name == name], "*")
    if not found:
        raise UsageError(f"no program '{name}' in site {plan.site.name}"
                         + did_you_mean(name, target_names(plan)),
                         f"name a program or process as `{command('status', env=plan.env)}` "
                         "shows it, an instance, instance:program, instance:* or all")
    return found


def _processes_named(scope: list[tuple[InstancePlan, ProgramPlan]],
                     name: str) -> list[tuple[InstancePlan, str]]:
    """The processes in ``scope`` that ``name`` (a program, a process, or ``*``) stands for."""
    return [(inst, process) for inst, program in scope for process in program.process_names()
            if name in ("*", program.name, process)]


def target_names(plan: Plan) -> list[str]:
    """The names ``resolve_targets`` takes, short ones first (shell completion, did-you-mean);
    supervisord's group-qualified names are accepted but not offered."""
    short = ["all", *plan.instances]
    qualified = []
    for inst in plan.instances.values():
        qualified.append(f"{inst.name}:*")
        for program in inst.programs:
            processes = program.process_names()
            short += [program.name] + (processes if len(processes) > 1 else [])
            qualified += [f"{inst.name}:{process}" for process in processes]
    return list(dict.fromkeys(short + qualified))


def _fault_message(action: str, fault: Fault) -> tuple[bool, str]:
    if action == "start" and fault.faultCode == FAULT_ALREADY_STARTED:
        return True, "already running"
    if action == "stop" and fault.faultCode == FAULT_NOT_RUNNING:
        return True, "already stopped"
    if fault.faultCode == FAULT_BAD_NAME:
        return False, "not loaded in the running supervisord (restart the instance to load it)"
    return False, fault.faultString


def control(plan: Plan, action: str, names: list[str]) -> ControlResult:
    """start, stop or restart processes; instances are handled concurrently."""
    if action not in ("start", "stop", "restart"):
        raise UsageError(f"unknown action {action}")
    targets = resolve_targets(plan, names)
    insts = [plan.instance(name) for name in targets]

    def run(inst: InstancePlan) -> list[ProcessOutcome]:
        processes = targets[inst.name]
        seen: dict[str, str] = {}
        try:
            endpoint = connect(plan, inst, timeout=30.0)
            outcome = _apply(endpoint, inst, action, processes, seen)
            tails = {} if action == "stop" else failing_tails(
                plan, inst, endpoint, {p: seen.get(p, "") for p in processes if not outcome[p][0]})
        except (RpcError, KeyAccessError) as exc:
            return [ProcessOutcome(inst.name, p, False, exc.one_line()) for p in processes]
        return [ProcessOutcome(inst.name, p, *outcome[p], tails.get(p)) for p in processes]

    return ControlResult([row for rows in concurrently(run, insts) for row in rows])


_STOPPED = {"STOPPED", "EXITED", "FATAL"}
_METHODS = {"start": "supervisor.startProcess", "stop": "supervisor.stopProcess"}
# A start that reaches a process while another command stops it is lost (supervisord's spawn
# returns at once while the old pid is still there), and a concurrent restart may stop what we
# started: a start is asked again this many times at most.
_START_ATTEMPTS = 3
_TO_STOP, _TO_START, _STARTING = "stop", "start", "starting"


class _Tracked:
    """One process on its way through start, stop or restart.

    Other commands may act on the same process at the same time (two `restart web`): what
    counts is what happened to the process, told by its pid and start time, not who did it.
    (A plain class: a dataclass costs `status`, which imports this module, a millisecond.)
    """

    def __init__(self, process: str, pid0: int, start0: int, message: str,
                 start_attempts: int = 0) -> None:
        self.process = process
        self.pid0 = pid0  # before we asked
        self.start0 = start0  # its start time then (supervisord's clock, whole seconds)
        self.message = message  # said when it gets there
        self.start_attempts = start_attempts
        self.phase = _TO_STOP
        self.deadline = 0.0
        self.limit = 0

    def is_new_run(self, info: dict[str, Any]) -> bool:
        """Started since we asked, by us or by anyone else."""
        pid, start = int(info["pid"] or 0), int(info["start"] or 0)
        return pid not in (0, self.pid0) or start > self.start0


def _limits(inst: InstancePlan) -> dict[str, int]:
    options = [p.options for p in inst.programs]
    startsecs = max((int(o["startsecs"]) for o in options), default=0) + 10
    stopwait = max((int(o["stopwaitsecs"]) for o in options), default=0) + 10
    return {_TO_STOP: stopwait, _TO_START: startsecs, _STARTING: startsecs}


def _apply(endpoint: Endpoint, inst: InstancePlan, action: str, processes: list[str],
           seen: dict[str, str] | None = None) -> dict[str, tuple[bool, str]]:
    """Ask for ``action`` on all processes at once, then poll until each has got there;
    ``seen`` gets the last state each process was seen in.

    Polling instead of supervisord's ``wait`` keeps a multicall from waiting out every
    process's startsecs one after another.
    """
    full = {p: inst.address(p) for p in processes}
    limits = _limits(inst)
    first = "start" if action == "start" else "stop"
    calls: list[tuple[str, tuple[Any, ...]]] = []
    for process in processes:  # each process's state just before the request, in one call
        calls += [("supervisor.getProcessInfo", (full[process],)),
                  (_METHODS[first], (full[process], False))]
    answers = endpoint.multicall(calls)
    outcome: dict[str, tuple[bool, str]] = {}
    tracked: list[_Tracked] = []
    seen = {} if seen is None else seen

    def enter(item: _Tracked, phase: str) -> None:
        item.phase, item.limit = phase, limits[phase]
        item.deadline = time.monotonic() + item.limit

    for n, process in enumerate(processes):
        before, answer = answers[2 * n], answers[2 * n + 1]
        if isinstance(before, dict):
            seen[process] = before["statename"]
        verdict, phase = _first_answer(action, before, answer)
        if verdict is not None:
            outcome[process] = verdict
            continue
        assert isinstance(before, dict)
        message = {"start": "started", "stop": "stopped", "restart": "restarted"}[action]
        if isinstance(answer, Fault) and answer.faultCode == FAULT_ALREADY_STARTED \
                and action == "start":
            message = "already running"
        item = _Tracked(process, int(before["pid"] or 0), int(before["start"] or 0), message,
                        start_attempts=int(first == "start"))
        enter(item, phase)
        tracked.append(item)

    while tracked:
        starting = [t for t in tracked if t.phase == _TO_START]
        if starting:
            answers = endpoint.multicall([(_METHODS["start"], (full[t.process], False))
                                          for t in starting])
            for item, answer in zip(starting, answers):
                item.start_attempts += 1
                if isinstance(answer, Fault) and answer.faultCode not in (FAULT_ALREADY_STARTED,
                                                                          FAULT_SPAWN_ERROR):
                    outcome[item.process] = (False, answer.faultString)
                else:  # started, by us or (ALREADY_STARTED) by another command
                    enter(item, _STARTING)
            tracked = [t for t in tracked if t.process not in outcome]
            if not tracked:
                break
        infos = endpoint.multicall([("supervisor.getProcessInfo", (full[t.process],))
                                    for t in tracked])
        waiting = []
        for item, info in zip(tracked, infos):
            if isinstance(info, dict):
                seen[item.process] = info["statename"]
            verdict = _progress(item, info, action, enter)
            if verdict is None:
                waiting.append(item)
            else:
                outcome[item.process] = verdict
        tracked = waiting
        if tracked and not any(t.phase == _TO_START for t in tracked):
            time.sleep(0.1)
    return outcome


def _first_answer(action: str, before: Any, answer: Any) -> tuple[tuple[bool, str] | None, str]:
    """The verdict at once (a failure, or nothing to wait for), or the phase to wait in."""
    first = "start" if action == "start" else "stop"
    if isinstance(before, Fault):
        return (False, _fault_message(first, before)[1]), ""
    if not isinstance(answer, Fault) or (first == "start"
                                         and answer.faultCode == FAULT_SPAWN_ERROR):
        return None, _STARTING if first == "start" else _TO_STOP
    ok, message = _fault_message(first, answer)
    if not ok:
        return (False, message), ""
    if action == "start":  # ALREADY_STARTED: running, or on its way there (another start)
        return ((True, message), "") if before["statename"] == "RUNNING" else (None, _STARTING)
    if action == "stop" and before["statename"] in _STOPPED:  # NOT_RUNNING
        return (True, message), ""
    # being stopped by another command, or a restart of a stopped process: wait until it is down
    return None, _TO_STOP


def _progress(item: _Tracked, info: Any, action: str,
              enter: Callable[[_Tracked, str], None]) -> tuple[bool, str] | None:
    """Where one polled process stands: a verdict, or None to keep waiting."""
    if isinstance(info, Fault):
        return False, info.faultString
    state = info["statename"]
    if item.phase == _TO_STOP:
        if item.is_new_run(info):  # another command started it again since we asked
            if action == "stop":
                return True, "stopped (and started again since by another command)"
            enter(item, _STARTING)  # a restart: someone else's start counts as ours
            return None
        if state in _STOPPED:
            if action == "stop":
                return True, "stopped"
            enter(item, _TO_START)
            return None
    elif item.phase == _STARTING:
        if state == "RUNNING":
            return True, item.message
        if state == "FATAL":
            return False, f"FATAL: {info['spawnerr'] or 'exited too quickly'}"
        if state == "EXITED":
            # only a process that got to RUNNING can be EXITED (startsecs = 0)
            return True, f"started, then exited with status {info['exitstatus']}"
        if state == "STOPPED":
            # another command's stop: it met our start (which then did nothing), or the process
            # we started (a concurrent restart, which starts it again too): ask again
            if item.start_attempts >= _START_ATTEMPTS:
                return False, "another command stopped it each time it was started"
            enter(item, _TO_START)
            return None
    if time.monotonic() > item.deadline:
        return False, (f"still {state} after {item.limit} s"
                       + (f": {info['spawnerr']}" if info["spawnerr"] else ""))
    return None


# ------------------------------------------------------------------------------------------
# tail


def select_targets(plan: Plan, names: Sequence[str],
                   instance: Selection = None) -> dict[str, list[str]]:
    """The processes ``names`` stand for (``resolve_targets``; none: ``all``, or with ``-i``
    every process of those instances), narrowed to the instances ``-i`` selects."""
    chosen = [inst.name for inst in plan.select(instance)]
    if not names:
        return resolve_targets(plan, [f"{name}:*" for name in chosen] if instance else ["all"])
    targets = resolve_targets(plan, names)
    narrowed = {name: processes for name, processes in targets.items() if name in chosen}
    if not narrowed:
        raise UsageError(f"{' '.join(names)}: not in instance {', '.join(chosen)}",
                         f"in: {', '.join(targets)}")
    return narrowed


def _find_process(plan: Plan, name: str,
                  instance: Selection = None) -> tuple[InstancePlan, ProgramPlan, str]:
    targets = select_targets(plan, [name], instance)
    if sum(len(v) for v in targets.values()) != 1:
        choices = [f"{i}:{p}" for i, ps in targets.items() for p in ps]
        raise UsageError(f"'{name}' names {len(choices)} processes; tail follows one",
                         f"one of: {', '.join(choices)}; or `{command('logs', name, env=plan.env)}` "
                         "for all of them")
    inst_name, processes = next(iter(targets.items()))
    inst = plan.instance(inst_name)
    process = processes[0]
    program = next(p for p in inst.programs if process in p.process_names())
    return inst, program, process


def tail(plan: Plan, name: str, write: Callable[[str], None], stderr: bool = False,
         follow: bool = False, nbytes: int = 4096, interval: float = 0.25,
         stop: threading.Event | None = None, notice: Callable[[str], None] | None = None,
         instance: Selection = None) -> None:
    """Print the end of a process log; with ``follow``, every byte written after it, once and
    in order, across rotations, or a notice line (``notice``, else ``==> ... <==`` through
    ``write``) where bytes were lost. Whoever can read the log files (the owner) reads them,
    backups included; anyone else reads the current file over RPC. ``instance`` (``-i``):
    ``name`` is looked for in those instances only."""
    from siteboot import logtail

    inst, program, process = _find_process(plan, name, instance)
    log_path = program.log_path(process, "stderr" if stderr else "stdout")
    if not os.access(log_path, os.R_OK):
        tail_over_rpc(plan, f"{inst.name}:{process}", write, stderr, follow, nbytes, interval,
                      stop, notice)
        return
    connect(plan, inst)  # the same checks (a key, a site of ours) as over RPC
    follower = logtail.FileFollower(log_path, int(program.options["log_backups"]), write, notice)
    try:
        follower.start(nbytes)
        if follow:
            logtail.follow(follower.poll, interval, stop)
    finally:
        follower.close()


def tail_over_rpc(plan: Plan, name: str, write: Callable[[str], None], stderr: bool = False,
                  follow: bool = False, nbytes: int = 4096, interval: float = 0.25,
                  stop: threading.Event | None = None,
                  notice: Callable[[str], None] | None = None) -> None:
    """``tail`` through supervisord alone: what a granted member, who cannot read the owner's
    files, gets."""
    from siteboot import logtail

    inst, _program, process = _find_process(plan, name)
    endpoint = connect(plan, inst, timeout=10.0)
    full = inst.address(process)
    stream = "Stderr" if stderr else "Stdout"
    # following needs the last bytes before the offset, to recognise the file the next time
    want = max(nbytes, logtail.FINGERPRINT) if follow else nbytes
    data, offset = tail_end(endpoint, full, stream, want)
    write(logtail.last_bytes(data, nbytes) if want != nbytes else data)
    if not follow:
        return
    follower = logtail.RpcFollower(log_reader(endpoint, full, stream), write, notice)
    follower.start(offset, data)
    try:
        logtail.follow(follower.poll, interval, stop)
    except Fault as fault:
        raise UsageError(f"cannot follow {full}: {fault.faultString}") from None


def log_reader(endpoint: Endpoint, full: str, stream: str) -> Callable[[int, int], Any]:
    """``read(offset, length)`` of one process log over RPC (``stream``: Stdout or Stderr), for
    ``logtail.RpcFollower``."""
    method = f"supervisor.readProcess{stream}Log"

    def read(start: int, length: int) -> Any:
        answer = endpoint.multicall([(method, (full, start, length))])[0]
        # no log file (yet, or any more): nothing to read; it may come back
        return "" if isinstance(answer, Fault) and answer.faultCode == FAULT_NO_FILE else answer

    return read


def tail_end(endpoint: Endpoint, full: str, stream: str, nbytes: int) -> tuple[str, int]:
    """The last ``nbytes`` of a process log (``stream``: Stdout or Stderr) and its size, over
    RPC; nothing while the log file does not exist (yet).

    supervisord decodes what it sends as UTF-8, so an end that begins inside a character fails;
    one of the next three shorter ends begins at a character.
    """
    method = f"supervisor.tailProcess{stream}Log"
    lengths = [nbytes] + [nbytes - n for n in (1, 2, 3) if nbytes - n > 0]
    answers = endpoint.multicall([(method, (full, 0, lengths[0]))])
    if isinstance(answers[0], Fault) and "UnicodeDecodeError" in answers[0].faultString:
        answers = endpoint.multicall([(method, (full, 0, n)) for n in lengths[1:]]) or answers
    for answer in answers:
        if not isinstance(answer, Fault):
            data, size, _overflow = answer
            return str(data), int(size)
    fault = answers[0]
    if fault.faultCode == FAULT_NO_FILE:
        return "", 0
    raise UsageError(f"cannot tail {full}: {fault.faultString}")


# ------------------------------------------------------------------------------------------
# ctl


def ctl(plan: Plan, instance: str, args: list[str]) -> int:
    """Run the real supervisorctl against one instance through siteboot's relay: supervisorctl
    never holds the key, every connection to the instance is checked before the key is sent,
    and a group member gets only what the grant covers (``relay.CONTROL_GRANT``)."""
    from siteboot.proc import run_foreground, supervisor_command
    from siteboot.relay import CONTROL_GRANT, relay_session

    inst = plan.instance(instance)
    endpoint = connect(plan, inst)
    try:  # a clear message (and who can fix it) before supervisorctl starts
        endpoint.call("supervisor.getAPIVersion")
    except RpcError as exc:
        raise _who_can_fix(plan, inst, exc) from None
    scope = None if plan.owns(inst) else CONTROL_GRANT
    with relay_session(endpoint, scope, inst.user, inst.identifier) as session:
        code = run_foreground(supervisor_command("supervisorctl", session.client_conf,
                                                 *supervisorctl_args(plan, inst, args)))
    # what went wrong on siteboot's side, which supervisorctl showed only as a fault
    problems = list({str(p): _who_can_fix(plan, inst, p) for p in session.relay.problems}.values())
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise SitebootError("\n".join(p.message for p in problems), problems[-1].hint)
    return code


# supervisorctl commands whose arguments name processes, and how many come before the names
_NAMING_COMMANDS = {"start": 0, "stop": 0, "restart": 0, "status": 0, "pid": 0, "clear": 0,
                    "fg": 0, "tail": 0, "signal": 1}


def supervisorctl_args(plan: Plan, inst: InstancePlan, args: Sequence[str]) -> list[str]:
    """``args`` as supervisorctl needs them: a name ``siteboot status`` shows (``worker_01``, a
    program, ``instance:process``) becomes supervisord's ``GROUP:PROCESS``; anything else (an
    option, ``all``, a name of another instance or of nothing) goes as given."""
    if not args or args[0] not in _NAMING_COMMANDS:
        return list(args)
    skip = 1 + _NAMING_COMMANDS[args[0]]
    qualified = list(args[:skip])
    for arg in args[skip:]:
        qualified += _qualified(plan, inst, arg)
    return qualified


def _qualified(plan: Plan, inst: InstancePlan, arg: str) -> list[str]:
    if arg.startswith("-") or arg == "all":
        return [arg]
    try:
        named = _named(plan, arg)
    except UsageError:
        return [arg]
    if not named or any(other.name != inst.name for other, _ in named):
        return [arg]
    program_of = {process: program for program in inst.programs
                  for process in program.process_names()}
    return [f"{supervisor_group(inst, program_of[process])}:{process}" for _, process in named]


def _who_can_fix(plan: Plan, inst: InstancePlan, problem: SitebootError) -> SitebootError:
    if isinstance(problem, RpcError) and problem.reason == NOT_RUNNING and not plan.owns(inst):
        problem.hint = (f"only {inst.user} can start it: "
                        f"`{command('up', env=plan.env, instance=inst.name)}` as {inst.user}")
    return problem


def settle(plan: Plan, timeout: float, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep,
           progress: Reporter = SILENT, every_program: bool = False) -> StatusResult:
    """Status once no program is STARTING or BACKOFF any more (or ``timeout`` has passed);
    ``progress`` sees the wait, and which programs it waits for. Without ``every_program`` a
    report that is already critical is final (one program FATAL); with it (a deploy, which
    judges each program) every program gets there."""
    deadline = clock() + timeout

    def waiting(report: StatusResult) -> list[str]:
        return [f"{p.name} {p.state}" for inst in report.instances for p in inst.programs
                if p.state in _PROGRAM_WARNING]

    def settled(report: StatusResult) -> bool:
        return not waiting(report) if every_program else report.exit_code != STATUS_WARNING

    report = status(plan)
    if settled(report):
        return report
    began = clock()
    with progress.step("waiting for programs to settle") as step:
        while True:
            if settled(report) or clock() >= deadline:
                return report
            names = waiting(report)
            step.update("waiting for programs to settle"
                        + (f" ({', '.join(names)})" if names else ""))
            sleep(settle_poll_interval(clock() - began))
            report = status(plan)


def settle_poll_interval(waited: float) -> float:
    """Seconds between two looks while programs settle: most get there within seconds of
    their start (``startsecs``), and every look later than that is time `init` and `revive`
    lose; a program slow to settle is not worth more than a few looks a second."""
    return 0.05 if waited < SETTLE_FAST_POLL_FOR else 0.2


SETTLE_FAST_POLL_FOR = 5.0  # seconds of fast looks after the wait began


# ------------------------------------------------------------------------------------------
# converge: what should run, runs


_NOT_RUNNING_STATES = {"FATAL", "EXITED", "STOPPED"}
_RUNNING_STATES = {"RUNNING", "STARTING", "BACKOFF"}


@dataclass
class Convergence:
    """What ``converge`` did to one instance's programs."""

    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    tails: dict[str, LogTail] = field(default_factory=dict)  # of the failed ones


def converge(plan: Plan, inst: InstancePlan, held: set[str]) -> Convergence:
    """Start every process that should run (``autostart``) and does not, except those an operator
    stopped (``held``) and those that wait for others (``readiness.start_dependants`` starts
    them in order); stop held ones that an edit or a fresh supervisord started again."""
    endpoint = connect(plan, inst, timeout=30.0)
    planned = {process: program for program in inst.programs
               for process in program.process_names()}
    infos = endpoint.call("supervisor.getAllProcessInfo")
    states = {i["name"]: i["statename"] for i in infos if i["name"] in planned}
    to_start = [p for p, state in states.items()
                if state in _NOT_RUNNING_STATES and planned[p].starts_with_supervisord
                and p not in held]
    to_stop = [p for p, state in states.items() if state in _RUNNING_STATES and p in held]
    result = Convergence()
    # FATAL and not started by `up` (autostart = false): it still counts as a failure
    failing = {p: state for p, state in states.items()
               if state == "FATAL" and not planned[p].autostart and p not in held}
    result.failed += [f"{p}: FATAL (autostart = false: "
                      f"`{command('start', f'{inst.name}:{p}', env=plan.env)}` starts it again)"
                      for p in failing]
    seen: dict[str, str] = {}
    for step, processes in (("stop", to_stop), ("start", to_start)):
        if not processes:
            continue
        for process, (ok, message) in _apply(endpoint, inst, step, processes, seen).items():
            was = states[process]
            if ok and step == "start":
                result.notes.append(f"started {process} (was {was})")
            elif ok:
                lift = command("start", f"{inst.name}:{process}", env=plan.env)
                result.notes.append(f"stopped {process} again: an operator stopped it "
                                    f"(`{lift}` lifts that)")
            else:
                result.failed.append(f"{process}: {_with_port_holder(inst, process, message)}")
                failing[process] = seen.get(process, "")
    result.tails = failing_tails(plan, inst, endpoint, failing)
    return result


def status_problems(report: StatusResult, instances: set[str] | None = None) -> list[str]:
    """One line per thing ``report`` finds wrong (of ``instances`` only, when given): an
    instance that does not run, a program that should run and does not."""
    lines = []
    for row in report.instances:
        if row.state == ORPHANED or row.severity == STATUS_OK:
            continue
        if instances is not None and row.name not in instances:
            continue
        if row.state != RUNNING:
            lines.append(f"{row.name}: {row.state}: {row.error or ''}".rstrip(": "))
        for p in row.programs:
            if p.severity != STATUS_OK:
                lines.append(f"{row.name}: {p.name} {p.state}"
                             + (f": {p.spawnerr}" if p.spawnerr else ""))
    return lines
