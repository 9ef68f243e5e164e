"""The supervisorctl wrapper: status, start/stop/restart, tail, ctl.

Imports stay light (no psutil, jinja2, virtualenv or supervisor): this is the hot path.
Instances are queried concurrently, each in one multicall request.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from siteboot.errors import (
    EXIT_FAILED,
    EXIT_OK,
    STATUS_CRITICAL,
    STATUS_OK,
    STATUS_UNKNOWN,
    STATUS_WARNING,
    KeyAccessError,
    UsageError,
    did_you_mean,
)
from siteboot.plan import InstancePlan, Plan, ProgramPlan
from siteboot.rpc import (
    FAULT_SHUTDOWN_STATE,
    NOT_ANSWERING,
    NOT_RUNNING,
    Endpoint,
    Fault,
    RpcError,
    connect,
    url_to,
)

# Instance states beyond the rpc reasons
RUNNING = "running"
NO_KEY = "no key"
NOT_YOURS = "not yours"  # another user's instance that grants no group: nothing to monitor

SHUTTING_DOWN = "shutting down"
RUNTIME_LOST = "running (runtime dir lost)"
ORPHANED = "orphaned"  # running, recorded as started by this account, no longer in the site
# A supervisord that does not answer, or is going away, runs nothing a monitor can count on.
_SEVERITY_OF_INSTANCE = {RUNNING: STATUS_OK, NOT_YOURS: STATUS_OK, RUNTIME_LOST: STATUS_WARNING,
                         ORPHANED: STATUS_WARNING,
                         NOT_RUNNING: STATUS_CRITICAL,
                         NOT_ANSWERING: STATUS_CRITICAL, SHUTTING_DOWN: STATUS_CRITICAL}
_PROGRAM_WARNING = {"STARTING", "BACKOFF"}
_PROGRAM_BAD = {"FATAL", "EXITED", "STOPPED", "STOPPING", "UNKNOWN", "NOT LOADED"}

# supervisor.xmlrpc.Faults
FAULT_BAD_NAME = 10
FAULT_ALREADY_STARTED = 60
FAULT_NOT_RUNNING = 70


@dataclass
class ProgramStatus:
    name: str
    group: str
    state: str
    pid: int | None
    uptime_s: int | None
    exitstatus: int | None
    spawnerr: str
    expected: bool  # should be running (autostart)

    @property
    def severity(self) -> int:
        if self.state == "RUNNING":
            return STATUS_OK
        if self.state in _PROGRAM_WARNING:
            return STATUS_WARNING
        if self.state == "FATAL" or (self.expected and self.state in _PROGRAM_BAD):
            return STATUS_CRITICAL
        return STATUS_OK

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "state": self.state, "pid": self.pid,
                "uptime_s": self.uptime_s, "exitstatus": self.exitstatus, "spawnerr": self.spawnerr}


@dataclass
class InstanceStatus:
    name: str
    user: str
    state: str
    url: str
    pid: int | None = None
    error: str | None = None
    programs: list[ProgramStatus] = field(default_factory=list)

    @property
    def severity(self) -> int:
        own = _SEVERITY_OF_INSTANCE.get(self.state, STATUS_UNKNOWN)
        return worst([own, *(p.severity for p in self.programs)])

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "user": self.user, "state": self.state, "pid": self.pid,
                "url": self.url, "error": self.error,
                "programs": [p.as_json() for p in self.programs]}


def worst(severities: list[int]) -> int:
    """Monitoring order: CRITICAL over UNKNOWN over WARNING over OK."""
    for level in (STATUS_CRITICAL, STATUS_UNKNOWN, STATUS_WARNING):
        if level in severities:
            return level
    return STATUS_OK


@dataclass
class StatusResult:
    site: str
    env: str
    instances: list[InstanceStatus]

    @property
    def exit_code(self) -> int:
        return worst([i.severity for i in self.instances])

    def as_json(self) -> dict[str, Any]:
        return {"site": self.site, "env": self.env, "ok": self.exit_code == STATUS_OK,
                "instances": [i.as_json() for i in self.instances]}


def instance_status(plan: Plan, inst: InstancePlan) -> InstanceStatus:
    owned = plan.owns(inst)
    url = url_to(plan, inst)
    socket_lost = url != plan.url_for(inst)
    result = InstanceStatus(inst.name, inst.user, RUNNING, url)
    try:
        endpoint = connect(plan, inst)
    except KeyAccessError as exc:
        if owned and not inst.socket_path.exists():
            result.state, result.error = NOT_RUNNING, f"no socket at {inst.socket_path}; run `siteboot up`"
        elif not owned and not inst.group:
            result.state, result.error = NOT_YOURS, f"owned by {inst.user}, no grant: run as {inst.user}"
        else:
            result.state, result.error = NO_KEY, str(exc)
        return result
    try:
        state, pid, infos = endpoint.multicall([("supervisor.getState", ()),
                                                ("supervisor.getPID", ()),
                                                ("supervisor.getAllProcessInfo", ())])
    except RpcError as exc:
        result.state, result.error = exc.reason, str(exc)
        if exc.reason == NOT_RUNNING and socket_lost:
            result.error = (f"no socket at {inst.socket_path} and nothing answers at {url}; "
                            "run `siteboot revive`")
        elif exc.reason == NOT_RUNNING and owned:
            result.error = f"nothing is listening at {url}; run `siteboot up`"
        return result
    if socket_lost:  # it serves, but its runtime files are gone (a /tmp cleaner)
        if os.path.isdir(inst.runtime_dir):
            result.error = (f"its control socket was lost; siteboot uses {url} until its next "
                            "restart")
        else:
            result.state = RUNTIME_LOST
            result.error = (f"runtime dir {inst.runtime_dir} is gone while it runs; `siteboot "
                            "revive` restores it without restarting programs")
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
                                held=operator_stops(inst) if owned else set())
    for row in result.programs:
        if row.state in _FAILING:
            row.spawnerr = _with_port_holder(inst, row.name, row.spawnerr)
    return result


# A program in these states may be failing because something else holds its port.
_FAILING = {"BACKOFF", "FATAL", "EXITED"}


def _with_port_holder(inst: InstancePlan, process: str, message: str) -> str:
    """``message``, plus who holds the process's port when a process outside the site does."""
    program = next((p for p in inst.programs if process in p.process_names()), None)
    if program is None or program.port is None:
        return message
    from siteboot.ports import foreign_holder  # psutil: only when something is failing

    holder = foreign_holder(program.port, {str(inst.conf_path)})
    return f"{message}; {holder}" if holder and message else (holder or message)


def _programs(inst: InstancePlan, infos: list[dict[str, Any]], fill_missing: bool = True,
              held: set[str] | frozenset[str] = frozenset()) -> list[ProgramStatus]:
    """``held``: processes an operator stopped on purpose: not expected to run."""
    by_process: dict[str, ProgramPlan] = {}
    for program in inst.programs:
        for process in program.process_names():
            by_process[process] = program
    rows = []
    seen = set()
    for info in infos:
        planned = by_process.get(info["name"])
        seen.add(info["name"])
        running = info["statename"] == "RUNNING"
        rows.append(ProgramStatus(
            name=info["name"], group=info["group"], state=info["statename"],
            pid=info["pid"] or None,
            uptime_s=int(info["now"] - info["start"]) if running and info["start"] else None,
            exitstatus=None if running or info["statename"] == "STARTING" else info["exitstatus"],
            spawnerr=info.get("spawnerr", "") or "",
            expected=(planned.autostart if planned else True) and info["name"] not in held,
        ))
    for process, program in by_process.items() if fill_missing else ():
        if process not in seen:
            rows.append(ProgramStatus(process, inst.group_name, "NOT LOADED", None, None, None,
                                      "in the site file but not in the running supervisord; "
                                      "restart the instance to load it", program.autostart))
    return rows


def _concurrently(func: Callable[[InstancePlan], Any], insts: list[InstancePlan]) -> list[Any]:
    results: list[Any] = [None] * len(insts)

    def work(i: int, inst: InstancePlan) -> None:
        try:
            results[i] = func(inst)
        except BaseException as exc:  # re-raised in the caller's thread
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i, inst), daemon=True)
               for i, inst in enumerate(insts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def status(plan: Plan, instance: str | None = None) -> StatusResult:
    insts = plan.select(instance)
    rows = _concurrently(lambda inst: instance_status(plan, inst), insts)
    if instance is None:
        rows += orphaned_rows(plan)
    return StatusResult(plan.site.name, plan.env, rows)


def orphaned_rows(plan: Plan) -> list[InstanceStatus]:
    """Supervisords this account started for the site and env that the site no longer describes
    (an instance removed, its runtime_dir or port changed): still running, and watched by nobody."""
    from siteboot.records import is_running, orphaned

    rows = []
    for record in orphaned(plan):
        if is_running(record):
            rows.append(InstanceStatus(
                record.instance, record.user, ORPHANED, record.instance_plan().unix_url,
                pid=record.pid, error=f"started from {record.site_path} with runtime dir "
                f"{record.runtime_dir}, no longer in the site: run `siteboot down --orphans`"))
    return rows


# ------------------------------------------------------------------------------------------
# start / stop / restart


@dataclass
class ProcessOutcome:
    instance: str
    process: str
    ok: bool
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"instance": self.instance, "process": self.process, "ok": self.ok,
                "message": self.message}


@dataclass
class ControlResult:
    """What ``start``, ``stop`` or ``restart`` did to each process; failed if any did not get there."""

    outcomes: list[ProcessOutcome]

    @property
    def exit_code(self) -> int:
        return EXIT_OK if all(o.ok for o in self.outcomes) else EXIT_FAILED

    def as_json(self) -> list[dict[str, Any]]:
        return [o.as_json() for o in self.outcomes]


def resolve_targets(plan: Plan, names: list[str]) -> dict[str, list[str]]:
    """``NAME``, ``instance:NAME``, ``instance:*`` or ``all`` → {instance: [process names]}."""
    targets: dict[str, list[str]] = {}

    def add(inst: InstancePlan, programs: list[ProgramPlan]) -> None:
        bucket = targets.setdefault(inst.name, [])
        for program in programs:
            for process in program.process_names():
                if process not in bucket:
                    bucket.append(process)

    for name in names:
        if name == "all":  # what the invoker may control: its own and granted instances
            for inst in plan.instances.values():
                if plan.owns(inst) or inst.group:
                    add(inst, inst.programs)
            continue
        if ":" in name:
            inst_name, prog = name.split(":", 1)
            inst = plan.instance(inst_name)
            if prog == "*":
                add(inst, inst.programs)
                continue
            chosen = [p for p in inst.programs if p.name == prog]
            if not chosen:
                owner = next((p for p in inst.programs if prog in p.process_names()), None)
                if owner is not None:  # one process of a numprocs program
                    bucket = targets.setdefault(inst.name, [])
                    if prog not in bucket:
                        bucket.append(prog)
                    continue
                raise UsageError(f"instance {inst.name} has no program '{prog}'",
                                 f"programs: {', '.join(p.name for p in inst.programs) or 'none'}")
            add(inst, chosen)
            continue
        found = [(inst, p) for inst in plan.instances.values() for p in inst.programs
                 if p.name == name]
        if not found:
            known = [p.name for inst in plan.instances.values() for p in inst.programs]
            raise UsageError(f"no program '{name}' in site {plan.site.name}"
                             + did_you_mean(name, known),
                             "name a program, instance:program, instance:* or all")
        for inst, program in found:
            add(inst, [program])
    return targets


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
        steps = ["stop", "start"] if action == "restart" else [action]
        outcome: dict[str, tuple[bool, str]] = {}
        try:
            endpoint = connect(plan, inst, timeout=30.0)
            for step in steps:
                todo = [p for p in processes if outcome.get(p, (True, ""))[0]]
                for process, (ok, msg) in _apply(endpoint, inst, step, todo).items():
                    outcome[process] = (ok, "restarted" if ok and action == "restart" else msg)
        except (RpcError, KeyAccessError) as exc:
            return [ProcessOutcome(inst.name, p, False, str(exc).splitlines()[0]) for p in processes]
        return [ProcessOutcome(inst.name, p, *outcome[p]) for p in processes]

    return ControlResult([row for rows in _concurrently(run, insts) for row in rows])


_STOPPED = {"STOPPED", "EXITED", "FATAL"}


def _apply(endpoint: Endpoint, inst: InstancePlan, step: str,
           processes: list[str]) -> dict[str, tuple[bool, str]]:
    """Ask for ``step`` on all processes at once, then poll until each has got there.

    Polling instead of supervisord's ``wait`` keeps a multicall from waiting out every
    process's startsecs one after another.
    """
    group = inst.group_name
    method = "supervisor.startProcess" if step == "start" else "supervisor.stopProcess"
    results = endpoint.multicall([(method, (f"{group}:{p}", False)) for p in processes])
    outcome: dict[str, tuple[bool, str]] = {}
    pending = []
    for process, res in zip(processes, results):
        if isinstance(res, Fault):
            outcome[process] = _fault_message(step, res)
        else:
            pending.append(process)
    options = [p.options for p in inst.programs]
    limit = max((int(o["startsecs"] if step == "start" else o["stopwaitsecs"]) for o in options),
                default=10) + 10
    deadline = time.monotonic() + limit
    while pending:
        infos = endpoint.multicall([("supervisor.getProcessInfo", (f"{group}:{p}",))
                                    for p in pending])
        waiting = []
        for process, info in zip(pending, infos):
            if isinstance(info, Fault):
                outcome[process] = (False, info.faultString)
            elif step == "start" and info["statename"] == "RUNNING":
                outcome[process] = (True, "started")
            elif step == "start" and info["statename"] == "FATAL":
                outcome[process] = (False, f"FATAL: {info['spawnerr'] or 'exited too quickly'}")
            elif step == "start" and info["statename"] == "EXITED":
                # only a process that got to RUNNING can be EXITED (startsecs = 0)
                outcome[process] = (True, f"started, then exited with status {info['exitstatus']}")
            elif step == "stop" and info["statename"] in _STOPPED:
                outcome[process] = (True, "stopped")
            elif time.monotonic() > deadline:
                outcome[process] = (False, f"still {info['statename']} after {limit} s"
                                    + (f": {info['spawnerr']}" if info["spawnerr"] else ""))
            else:
                waiting.append(process)
        pending = waiting
        if pending:
            time.sleep(0.1)
    return outcome


# ------------------------------------------------------------------------------------------
# tail


def _find_process(plan: Plan, name: str) -> tuple[InstancePlan, ProgramPlan, str]:
    targets = resolve_targets(plan, [name])
    if sum(len(v) for v in targets.values()) != 1:
        choices = [f"{i}:{p}" for i, ps in targets.items() for p in ps]
        raise UsageError(f"'{name}' names {len(choices)} processes; tail follows one",
                         f"one of: {', '.join(choices)}")
    inst_name, processes = next(iter(targets.items()))
    inst = plan.instance(inst_name)
    process = processes[0]
    program = next(p for p in inst.programs if process in p.process_names())
    return inst, program, process


def tail(plan: Plan, name: str, write: Callable[[str], None], stderr: bool = False,
         follow: bool = False, nbytes: int = 4096, interval: float = 0.25,
         stop: threading.Event | None = None) -> None:
    """Print the end of a process log; with ``follow``, keep printing across rotations."""
    inst, program, process = _find_process(plan, name)
    endpoint = connect(plan, inst, timeout=10.0)
    full = f"{inst.group_name}:{process}"
    method = "supervisor.tailProcessStderrLog" if stderr else "supervisor.tailProcessStdoutLog"
    log_path = program.log_path(process, "stderr" if stderr else "stdout")

    def call(offset: int, length: int) -> tuple[str, int]:
        try:
            data, new_offset, _overflow = endpoint.call(method, full, offset, length)
        except Fault as fault:
            raise UsageError(f"cannot tail {full}: {fault.faultString}") from None
        return str(data), int(new_offset)

    data, offset = call(0, nbytes)
    write(data)
    if not follow:
        return
    if os.access(log_path, os.R_OK):
        _follow_file(log_path, offset, write, interval, stop)
        return
    chunk = 1 << 20
    while not (stop is not None and stop.is_set()):
        time.sleep(interval)
        data, new_offset = call(offset, chunk)
        if new_offset < offset:
            # Rotated (the log shrank): supervisord's tail cannot see the old file's rest.
            data, new_offset = call(0, new_offset)
        write(data)
        offset = new_offset


def _follow_file(path: Path, offset: int, write: Callable[[str], None], interval: float,
                 stop: threading.Event | None) -> None:
    """``tail -F``: keep the old file open across a rotation, drain it, then reopen."""
    handle = open(path, "rb")  # noqa: SIM115 - swapped on rotation
    try:
        handle.seek(offset)
        inode = os.fstat(handle.fileno()).st_ino
        while not (stop is not None and stop.is_set()):
            data = handle.read()
            if data:
                write(data.decode("utf-8", errors="replace"))
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = inode
            if current != inode:
                write(handle.read().decode("utf-8", errors="replace"))
                handle.close()
                handle = open(path, "rb")  # noqa: SIM115
                inode = os.fstat(handle.fileno()).st_ino
                continue
            time.sleep(interval)
    finally:
        handle.close()


# ------------------------------------------------------------------------------------------
# ctl


def ctl(plan: Plan, instance: str, args: list[str]) -> int:
    """Run the real supervisorctl against one instance through a 0600 client config."""
    from siteboot.keys import read_key, write_client_conf
    from siteboot.proc import run_interactive, supervisor_command

    inst = plan.instance(instance)
    key = read_key(plan, inst)
    # supervisorctl sends the key to whoever listens, unchecked: only hand it over once the
    # instance itself has answered (a small window remains; `status` and `start` have none).
    try:
        connect(plan, inst, key=key).call("supervisor.getAPIVersion")
    except RpcError as exc:
        if exc.reason == NOT_RUNNING and not plan.owns(inst):
            exc.hint = f"only {inst.user} can start it: `siteboot up -i {inst.name}` as {inst.user}"
        raise
    conf = write_client_conf(plan, inst, key, url_to(plan, inst))
    return run_interactive(supervisor_command("supervisorctl", conf, *args))


def settle(plan: Plan, timeout: float, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> StatusResult:
    """Status once no program is STARTING or BACKOFF any more (or ``timeout`` has passed)."""
    deadline = clock() + timeout
    while True:
        report = status(plan)
        if report.exit_code != STATUS_WARNING or clock() >= deadline:
            return report
        sleep(0.2)


# ------------------------------------------------------------------------------------------
# converge: what should run, runs


_NOT_RUNNING_STATES = {"FATAL", "EXITED", "STOPPED"}
_RUNNING_STATES = {"RUNNING", "STARTING", "BACKOFF"}


@dataclass
class Convergence:
    """What ``converge`` did to one instance's programs."""

    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def converge(plan: Plan, inst: InstancePlan, held: set[str]) -> Convergence:
    """Start every process that should run (``autostart``) and does not, except those an operator
    stopped (``held``); stop held ones that an edit or a fresh supervisord started again."""
    endpoint = connect(plan, inst, timeout=30.0)
    planned = {process: program for program in inst.programs
               for process in program.process_names()}
    infos = endpoint.call("supervisor.getAllProcessInfo")
    states = {i["name"]: i["statename"] for i in infos if i["name"] in planned}
    to_start = [p for p, state in states.items()
                if state in _NOT_RUNNING_STATES and planned[p].autostart and p not in held]
    to_stop = [p for p, state in states.items() if state in _RUNNING_STATES and p in held]
    result = Convergence()
    for step, processes in (("stop", to_stop), ("start", to_start)):
        if not processes:
            continue
        for process, (ok, message) in _apply(endpoint, inst, step, processes).items():
            was = states[process]
            if ok and step == "start":
                result.notes.append(f"started {process} (was {was})")
            elif ok:
                result.notes.append(f"stopped {process} again: an operator stopped it "
                                    f"(`siteboot start {inst.name}:{process}` lifts that)")
            else:
                result.failed.append(f"{process}: {_with_port_holder(inst, process, message)}")
    return result
