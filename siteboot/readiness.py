"""Start order and readiness, as siteboot itself acts on them.

A program with ``depends_on`` starts only once everything it depends on is *ready*: RUNNING and,
when it has a ``ready`` probe, passing it. supervisord knows nothing of this, so such programs
are rendered ``autostart = false`` and started here, in waves (``start_dependants``: ``up``,
``init``, ``revive``, ``rotate-key``); several programs started, stopped or restarted at once
act in waves by dependency depth and ``priority`` (``control_in_waves``), stopping in reverse;
``down`` stops dependants before what they depend on (``stop_dependants_first``). Deploys wait
with ``wait_ready``. Inside supervisord, ``healer`` keeps the same rules while nobody runs
siteboot.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from siteboot import probes
from siteboot.concurrency import concurrently
from siteboot.control import (
    ControlResult,
    Convergence,
    ProcessOutcome,
    _apply,
    control,
    resolve_targets,
)
from siteboot.errors import KeyAccessError, SitebootError
from siteboot.ordering import depths, waves
from siteboot.plan import InstancePlan, Plan, ProgramPlan, Selection
from siteboot.rpc import Fault, RpcError, connect

if TYPE_CHECKING:
    from siteboot.instances import InstanceOutcome

POLL = 0.25
_NOT_RUNNING = {"FATAL", "EXITED", "STOPPED"}
_STARTED = {"RUNNING", "STARTING", "BACKOFF"}

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Infos = Callable[[InstancePlan], "list[dict[str, Any]] | str"]


# ------------------------------------------------------------------------------------------
# The graph of one env


def owners(plan: Plan) -> dict[str, tuple[InstancePlan, ProgramPlan]]:
    """program name -> (its instance, its plan), over every instance of the env."""
    return {p.name: (inst, p) for inst in plan.instances.values() for p in inst.programs}


def edges(plan: Plan) -> dict[str, list[str]]:
    """program -> the programs it depends on (the site has checked they exist)."""
    return {p.name: p.depends_on for inst in plan.instances.values() for p in inst.programs}


def ranks(plan: Plan) -> dict[str, tuple[int, int]]:
    """program -> (dependency depth, priority): the order waves go in."""
    depth = depths(edges(plan))
    return {p.name: (depth[p.name], int(p.options["priority"]))
            for inst in plan.instances.values() for p in inst.programs}


def has_dependencies(plan: Plan) -> bool:
    return any(p.depends_on for inst in plan.instances.values() for p in inst.programs)


# ------------------------------------------------------------------------------------------
# Readiness


@dataclass(frozen=True)
class NotReady:
    """A program that did not become ready in time, and why (its probe's last error)."""

    instance: str
    program: str
    waited_s: float
    reason: str

    def __str__(self) -> str:
        return f"{self.instance}:{self.program} not ready after {self.waited_s:.0f} s: {self.reason}"


def process_infos(plan: Plan) -> Infos:
    """Each instance's process states, or why they cannot be read (another account's instance
    without a grant: its probes alone then decide)."""
    def read(inst: InstancePlan) -> list[dict[str, Any]] | str:
        try:
            return list(connect(plan, inst, timeout=10.0).call("supervisor.getAllProcessInfo"))
        except SitebootError as exc:
            return exc.message.splitlines()[0]
        except (Fault, OSError) as exc:
            return str(exc)
    return read


def readiness(program: ProgramPlan, infos: list[dict[str, Any]] | str,
              check: Callable[[Mapping[str, Any]], str | None] = probes.check) -> str | None:
    """None when ``program`` is ready, else why not: a process not RUNNING, or its probe's
    error. Unknown states (``infos`` is an error) leave it to the probe, if there is one."""
    probe = program.probe
    if isinstance(infos, str):
        if probe is None:
            return f"its state cannot be read ({infos}) and it has no ready probe"
    else:
        states = {i["name"]: i for i in infos}
        for process in program.process_names():
            info = states.get(process)
            if info is None:
                return "not loaded in its supervisord"
            if info["statename"] != "RUNNING":
                detail = info.get("spawnerr") or ""
                return f"{process} is {info['statename']}" + (f" ({detail})" if detail else "")
    if probe is None:
        return None
    error = check(probe)
    return None if error is None else f"{probes.describe(probe)}: {error}"


def await_ready(plan: Plan, items: Sequence[tuple[InstancePlan, ProgramPlan]],
                timeouts: Mapping[str, float], infos: Infos | None = None,
                check: Callable[[Mapping[str, Any]], str | None] = probes.check,
                clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> list[NotReady]:
    """Wait until every program of ``items`` is ready, each for at most its own timeout
    (``timeouts`` by program name); those that are not, with the last reason seen."""
    read = infos or process_infos(plan)
    started = clock()
    pending = {program.name: (inst, program) for inst, program in items}
    last: dict[str, str] = {}
    failed: list[NotReady] = []
    while pending:
        states: dict[str, list[dict[str, Any]] | str] = {}
        for inst, _ in pending.values():
            if inst.name not in states:
                states[inst.name] = read(inst)
        for name, (inst, program) in list(pending.items()):
            why = readiness(program, states[inst.name], check)
            if why is None:
                del pending[name]
                continue
            last[name] = why
            waited = clock() - started
            if waited >= timeouts[name]:
                failed.append(NotReady(inst.name, name, waited, why))
                del pending[name]
        if pending:
            sleep(POLL)
    return failed


def wait_ready(plan: Plan, inst: InstancePlan, programs: Iterable[str],
               timeout: float | None = None) -> list[NotReady]:
    """Wait until the named programs of ``inst`` are ready (RUNNING, and their probe passes),
    each for its ``ready_timeout`` (or ``timeout``); [] when all are. For deploys, and anything
    else that must not go on before a program serves."""
    chosen = [(inst, p) for p in inst.programs if p.name in set(programs)]
    return await_ready(plan, chosen, {p.name: timeout or float(p.options["ready_timeout"])
                                      for _, p in chosen})


# ------------------------------------------------------------------------------------------
# up, init, revive: what waits for others, in order


def start_dependants(plan: Plan, instances: Iterable[str], held: Mapping[str, set[str]],
                     infos: Infos | None = None,
                     check: Callable[[Mapping[str, Any]], str | None] = probes.check,
                     clock: Clock = time.monotonic, sleep: Sleep = time.sleep,
                     apply: Callable[..., dict[str, tuple[bool, str]]] | None = None
                     ) -> dict[str, Convergence]:
    """Start the programs with ``depends_on`` of ``instances`` (the invoker's, running) that
    should run and do not, wave by wave, each once what it depends on is ready. A dependency
    that does not get ready in its ``ready_timeout`` stops the chain there: what depends on it
    (directly or not) is not started, and the failure names the probe and its last error.
    ``held``: processes an operator stopped, per instance (left alone)."""
    read = infos or process_infos(plan)
    act = apply or _start_over_rpc(plan)
    chosen = set(instances)
    owner = owners(plan)
    graph = edges(plan)
    order = ranks(plan)
    results = {name: Convergence() for name in chosen}
    dependent = [name for name, (inst, p) in owner.items() if p.depends_on and inst.name in chosen]
    blocked: dict[str, str] = {}  # program -> why nothing that depends on it starts
    for wave in waves(dependent, order):
        states = {name: read(plan.instance(name)) for name in chosen}
        to_start: dict[str, list[str]] = {}
        for name in wave:
            inst, program = owner[name]
            processes = _should_start(program, states[inst.name], held.get(inst.name, set()))
            if processes and not _blocked(name, program, blocked, results[inst.name]):
                to_start[name] = processes
        needed = sorted({d for name in to_start for d in graph[name]})
        late = await_ready(plan, [owner[d] for d in needed],
                           {d: float(owner[d][1].options["ready_timeout"]) for d in needed},
                           read, check, clock, sleep)
        for miss in late:
            blocked[miss.program] = str(miss)
        by_instance: dict[str, list[str]] = {}
        for name, processes in to_start.items():
            inst, program = owner[name]
            if _blocked(name, program, blocked, results[inst.name]):
                continue
            by_instance.setdefault(inst.name, []).extend(processes)
        started = concurrently(lambda item: (item[0], act(plan.instance(item[0]), item[1])),
                               list(by_instance.items()))
        for inst_name, outcome in started:
            for process, (ok, message) in outcome.items():
                if ok:
                    results[inst_name].notes.append(
                        f"started {process} once what it depends on was ready")
                else:
                    program = next(p for p in plan.instance(inst_name).programs
                                   if process in p.process_names())
                    blocked[program.name] = f"{process} did not start: {message}"
                    results[inst_name].failed.append(f"{process}: {message}")
    return results


def _blocked(name: str, program: ProgramPlan, blocked: dict[str, str],
             result: Convergence) -> bool:
    """Whether ``program`` waits for one that will not be ready: then it is not started either,
    and says why (the first probe that failed, with its last error)."""
    stuck = next((d for d in program.depends_on if d in blocked), None)
    if stuck is None:
        return False
    blocked[name] = blocked[stuck]
    result.failed.append(f"{name}: not started: {blocked[stuck]}")
    return True


def _should_start(program: ProgramPlan, infos: list[dict[str, Any]] | str,
                  held: set[str]) -> list[str]:
    if not program.autostart or isinstance(infos, str):
        return []
    states = {i["name"]: i["statename"] for i in infos}
    return [p for p in program.process_names()
            if states.get(p) in _NOT_RUNNING and p not in held]


def _start_over_rpc(plan: Plan) -> Callable[[InstancePlan, list[str]], dict[str, tuple[bool, str]]]:
    def start(inst: InstancePlan, processes: list[str]) -> dict[str, tuple[bool, str]]:
        try:
            return _apply(connect(plan, inst, timeout=30.0), inst, "start", processes)
        except (RpcError, KeyAccessError) as exc:
            return {p: (False, exc.one_line()) for p in processes}
    return start


# ------------------------------------------------------------------------------------------
# start / stop / restart of several programs: in waves


def control_in_waves(plan: Plan, action: str, names: list[str],
                     clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> ControlResult:
    """``control``, in waves by (dependency depth, priority): a start waits for each wave to be
    RUNNING, and for what a program depends on among the targets to be ready; a stop goes in
    reverse; a restart stops in reverse, then starts in order. One wave: ``control`` itself."""
    targets = resolve_targets(plan, names)
    order = ranks(plan)
    program_of = {(i, proc): p for i, procs in targets.items()
                  for p in plan.instance(i).programs for proc in procs
                  if proc in p.process_names()}
    grouped = waves(sorted({p.name for p in program_of.values()}), order)
    if len(grouped) < 2 or action not in ("start", "stop", "restart"):
        return control(plan, action, names)
    owner = owners(plan)
    outcomes: dict[tuple[str, str], ProcessOutcome] = {}

    def act(step: str, wave: list[str]) -> None:
        items = [key for key, p in program_of.items() if p.name in wave
                 and (key not in outcomes or outcomes[key].ok)]
        by_instance: dict[str, list[str]] = {}
        for inst_name, process in items:
            by_instance.setdefault(inst_name, []).append(process)
        for rows in concurrently(lambda item: _act(plan, step, *item), list(by_instance.items())):
            for row in rows:
                outcomes[(row.instance, row.process)] = row

    if action in ("stop", "restart"):
        for wave in reversed(grouped):
            act("stop", wave)
    if action in ("start", "restart"):
        targeted = {p.name for p in program_of.values()}
        for wave in grouped:
            failed = {p.name: outcomes[key].message for key, p in program_of.items()
                      if key in outcomes and not outcomes[key].ok}
            wanted = {d for name in wave for d in owner[name][1].depends_on
                      if d in targeted and d not in failed}
            late = await_ready(plan, [owner[d] for d in sorted(wanted)],
                               {d: float(owner[d][1].options["ready_timeout"]) for d in wanted},
                               clock=clock, sleep=sleep) if wanted else []
            missing = {miss.program: str(miss) for miss in late}
            missing.update({d: f"{d} did not start: {why}" for d, why in failed.items()})
            for key, program in program_of.items():
                stuck = next((d for d in program.depends_on if d in missing), None)
                if program.name in wave and stuck is not None:
                    outcomes[key] = ProcessOutcome(*key, False, f"not started: {missing[stuck]}")
            act("start", wave)
    if action == "restart":
        for key, row in outcomes.items():
            if row.ok:
                outcomes[key] = ProcessOutcome(*key, True, "restarted")
    return ControlResult([outcomes[key] for key in program_of if key in outcomes])


def _act(plan: Plan, step: str, inst_name: str, processes: list[str]) -> list[ProcessOutcome]:
    inst = plan.instance(inst_name)
    try:
        outcome = _apply(connect(plan, inst, timeout=30.0), inst, step, processes)
    except (RpcError, KeyAccessError) as exc:
        return [ProcessOutcome(inst.name, p, False, exc.one_line()) for p in processes]
    return [ProcessOutcome(inst.name, p, *outcome[p]) for p in processes]


# ------------------------------------------------------------------------------------------
# down: dependants first


def stop_dependants_first(plan: Plan, instance: Selection = None) -> dict[str, list[str]]:
    """Before ``down`` shuts the invoker's instances down: stop, in reverse waves, the running
    programs that others depend on and those others (supervisord's own shutdown knows only
    ``priority``, and only within one instance). Best effort: ``down`` stops everything anyway.
    """
    if not has_dependencies(plan):
        return {}
    graph = edges(plan)
    involved = {name for name, deps in graph.items() if deps} | \
        {d for deps in graph.values() for d in deps}
    from siteboot.records import started_elsewhere

    owner = owners(plan)
    # another checkout's instance: `down` refuses it, so nothing of it is stopped here either;
    # one placed on another host is that host's `down` to stop (and not reachable from here)
    selected = {inst.name for inst in plan.select(instance)
                if plan.owns(inst) and inst.here and started_elsewhere(plan, inst) is None}
    names = sorted(n for n in involved if owner[n][0].name in selected)
    grouped = waves(names, ranks(plan))
    if len(grouped) < 2:
        return {}
    notes: dict[str, list[str]] = {}
    for wave in reversed(grouped):
        by_instance: dict[str, list[str]] = {}
        for name in wave:
            inst, program = owner[name]
            by_instance.setdefault(inst.name, []).extend(program.process_names())
        for rows in concurrently(lambda item: _act(plan, "stop", *item), list(by_instance.items())):
            for row in rows:
                if row.ok and row.message == "stopped":
                    notes.setdefault(row.instance, []).append(
                        f"stopped {row.process} in dependency order (dependants first)")
    return notes


# ------------------------------------------------------------------------------------------
# After up: what should run, runs (in order)


def converge_outcomes(plan: Plan, outcomes: list[InstanceOutcome]) -> None:
    """``converge`` each instance that ``up`` left running, then start the programs that wait
    for others; a program that should run and does not turns its instance's outcome into a
    failure, saying which and why."""
    from siteboot.control import converge
    from siteboot.records import operator_stops

    for outcome in outcomes:
        if outcome.action not in ("started", "already running", "updated"):
            continue
        inst = plan.instance(outcome.instance)
        try:
            done = converge(plan, inst, operator_stops(inst))
        except RpcError as exc:
            outcome.action, outcome.detail = "failed", f"cannot check its programs: {exc.message}"
            continue
        except Fault as fault:  # it began to shut down meanwhile
            outcome.action, outcome.detail = "failed", f"supervisord answered: {fault.faultString}"
            continue
        _merge(outcome, done)
    _start_in_order(plan, outcomes)



def _merge(outcome: InstanceOutcome, done: Convergence) -> None:
    outcome.notes += done.notes
    outcome.notes += [f"{process} {tail.stream} | {line}"
                      for process, tail in done.tails.items() for line in tail.lines]
    if done.failed and outcome.action == "failed" and outcome.detail.startswith(_DO_NOT_RUN):
        outcome.detail += "; " + "; ".join(done.failed)
    elif done.failed:
        outcome.action, outcome.detail = "failed", _DO_NOT_RUN + "; ".join(done.failed)
    elif done.notes and outcome.action == "already running":
        outcome.action, outcome.detail = "updated", "programs started or stopped"


_DO_NOT_RUN = "programs that should run do not: "


def _start_in_order(plan: Plan, outcomes: list[InstanceOutcome]) -> None:
    """Programs that wait for others (``depends_on``): started once those are ready, in waves
    across the invoker's instances that run."""
    if not any(p.depends_on for inst in plan.instances.values() for p in inst.programs):
        return
    from siteboot.records import operator_stops

    running = [o for o in outcomes if o.action in ("started", "already running", "updated",
                                                   "rotated")
               or (o.action == "failed" and o.detail.startswith(_DO_NOT_RUN))]
    held = {o.instance: operator_stops(plan.instance(o.instance)) for o in running}
    done = start_dependants(plan, [o.instance for o in running], held)
    for outcome in running:
        _merge(outcome, done[outcome.instance])
