"""Starting and stopping supervisord instances: identity, stale state, locks, escalation.

Nothing here signals a process it has not identified as this instance's supervisord (or one
of its descendants): the owner's uid, ``supervisord`` with this instance's config on its
command line, and a start time that fits the pidfile.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from siteboot.concurrency import concurrently
from siteboot.errors import (
    EXIT_FAILED,
    EXIT_OK,
    InstanceError,
    OwnershipError,
    SecretError,
    SitebootError,
    UsageError,
    describe_os_error,
)
from siteboot.fsutil import (
    atomic_write,
    ensure_private_dir,
    flock,
    verify_shared_parent,
    verify_unswappable,
)
from siteboot.hints import command
from siteboot.plan import InstancePlan, Plan, Selection, socket_path_problem
from siteboot.proc import (
    TIMED_OUT,
    alive,
    file_tail,
    is_supervisord,
    own_pids,
    pid_alive,
    read_proc_file,
    run_command,
    signal_process,
    supervisor_command,
    terminate_tree,
    view_process,
    without_secrets,
)
from siteboot.rpc import (
    FAULT_SHUTDOWN_STATE,
    SUPERVISOR_RUNNING,
    Endpoint,
    Fault,
    RpcError,
    connect,
)
from siteboot.sitefiles import record_started, restarts
from siteboot.statusreport import NOT_ANSWERING, NOT_RUNNING

if TYPE_CHECKING:
    from siteboot.changes import ConfigChanges
    from siteboot.records import StartRecord
    from siteboot.secretstore import SecretStore
    from siteboot.sitefiles import SiteFiles

LOCK_TIMEOUT = 120.0
START_TIMEOUT = 30.0
DEFAULT_STOP_WAIT = 10  # supervisord's own default stopwaitsecs
HUNG_AFTER = 30.0  # seconds of silence (after SIGCONT) before `revive` replaces a supervisord


@dataclass
class InstanceOutcome:
    """What happened to one instance."""

    instance: str
    action: str  # started, already running, updated, stopped, not running, skipped, failed,
    # rendered (`init --no-start`)
    detail: str = ""
    pid: int | None = None
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"instance": self.instance, "action": self.action, "detail": self.detail,
                "pid": self.pid, "notes": self.notes}


@dataclass
class LifecycleResult:
    """What ``up`` or ``down`` did to each instance; it failed if any instance failed."""

    outcomes: list[InstanceOutcome]
    sources: str = ""  # which site file and template the configs came from (``up``, ``init``)

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if any(o.action == "failed" for o in self.outcomes) else EXIT_OK

    def as_json(self) -> list[dict[str, Any]]:
        return [o.as_json() for o in self.outcomes]


# ------------------------------------------------------------------------------------------
# Locks


@contextmanager
def instance_lock(plan: Plan, inst: InstancePlan, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """One ``up``/``down``/``init`` at a time per instance (fcntl, released on any exit)."""
    path = plan.lock_path(inst)
    ensure_private_dir(plan.invoker_state_dir)
    ensure_private_dir(path.parent)
    with flock(path, timeout=timeout, what=f"the lock of {inst.name}", error=InstanceError):
        yield


# ------------------------------------------------------------------------------------------
# Identity


def _is_supervisord_of(cmdline: list[str], inst: InstancePlan) -> bool:
    return is_supervisord(cmdline) and str(inst.conf_path) in cmdline


def find_supervisord(inst: InstancePlan) -> Any | None:
    """This instance's running supervisord as a psutil.Process, found by identity, or None.

    The pidfile is tried first; a stale one (dead pid, or a live process that is not this
    instance's supervisord) is ignored here and removed by ``clear_stale``. Then the process
    table, for a supervisord whose runtime files were wiped while it kept running.
    """
    uid = os.geteuid()
    pid = read_pidfile(inst)
    if pid:  # read from /proc: a running instance costs no psutil (``ProcessView``)
        view = view_process(pid)
        try:
            if (view is not None and view.uid == uid and _is_supervisord_of(view.cmdline(), inst)
                    and view.create_time() <= inst.pidfile.stat().st_mtime + 2):
                return view
        except OSError:
            pass
    import psutil

    conf = os.fsencode(inst.conf_path) + b"\0"
    for candidate in own_pids(uid):  # the command line read only where the config is named
        if conf not in read_proc_file(candidate, "cmdline"):
            continue
        try:
            proc = psutil.Process(candidate)
            if proc.uids().real == uid and _is_supervisord_of(proc.cmdline(), inst):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return None


def read_pidfile(inst: InstancePlan) -> int | None:
    """The pid in the instance's pidfile, if it is a small regular file: read before the runtime
    dir is verified, so a FIFO or a symlink to /dev/zero planted there must not hang us."""
    import stat

    try:
        fd = os.open(inst.pidfile, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return int(os.read(fd, 64).decode("ascii", "replace").strip())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def clear_stale(inst: InstancePlan, running: Any | None) -> list[str]:
    """Remove a pidfile and socket that no live supervisord of this instance stands behind."""
    notes = []
    pid = read_pidfile(inst)
    if inst.pidfile.exists() and (running is None or running.pid != pid):
        if pid is None:
            what = "no pid in it"
        elif not pid_alive(pid):
            what = f"pid {pid} is not running"
        else:
            what = f"pid {pid} is not this instance's supervisord; it was left alone"
        inst.pidfile.unlink()
        notes.append(f"removed stale pidfile {inst.pidfile} ({what})")
    if running is None and inst.socket_path.exists():
        inst.socket_path.unlink()
        notes.append(f"removed stale socket {inst.socket_path} (no listener)")
    return notes


def find_orphans(inst: InstancePlan, running: Any | None = None) -> list[Any]:
    """Processes that a supervisord of this instance started and no longer supervises.

    After a supervisord is SIGKILLed its programs live on (ppid 1), holding ports. They are
    recognised by what supervisord put in their environment, pointing at this instance's socket,
    never by name, and only among the invoker's own processes. Children of the live supervisord
    ``running`` are not orphans.
    """
    import psutil

    uid = os.geteuid()
    supervised: set[int] = set()
    if running is not None:
        try:
            supervised = {running.pid, *(p.pid for p in running.children(recursive=True))}
        except psutil.Error:
            supervised = {running.pid}
    found = []
    marker = b"\0SUPERVISOR_SERVER_URL=" + os.fsencode(inst.unix_url) + b"\0"
    for pid in own_pids(uid):  # the environment parsed only where it names the instance
        if pid in supervised or marker not in b"\0" + read_proc_file(pid, "environ"):
            continue
        try:
            proc = psutil.Process(pid)
            if proc.uids().real == uid \
                    and proc.environ().get("SUPERVISOR_SERVER_URL") == inst.unix_url:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def stop_orphans(inst: InstancePlan, orphans: list[Any]) -> list[str]:
    """SIGTERM ``orphans``, wait their programs' ``stopwaitsecs``, then SIGKILL; what was done."""
    import psutil

    if not orphans:
        return []
    waits = inst.stop_waits()
    names = {}
    for proc in orphans:
        try:
            names[proc.pid] = proc.environ().get("SUPERVISOR_PROCESS_NAME", "?")
        except psutil.Error:
            names[proc.pid] = "?"
    grace = max((waits.get(name, DEFAULT_STOP_WAIT) for name in names.values()),
                default=DEFAULT_STOP_WAIT)
    terminate_tree(orphans[0], extra=orphans[1:], grace=float(grace))
    listed = ", ".join(f"{name} (pid {pid})" for pid, name in sorted(names.items()))
    return [f"stopped {len(orphans)} orphaned process(es) left by an earlier supervisord: {listed}"]


# ------------------------------------------------------------------------------------------
# Provisioning: runtime dir, key, config


def prepare_runtime_dir(inst: InstancePlan) -> None:
    """The instance's own runtime dir (0700, its user's) on a path no stranger can swap: under
    a private parent of its user, or a root-owned sticky one that several accounts share."""
    problem = socket_path_problem(inst)
    if problem:
        raise UsageError(f"instance {inst.name}: {problem}")
    owner = os.geteuid()
    if inst.runtime_parent is not None and not inst.runtime_parent_private:
        verify_shared_parent(inst.runtime_parent)  # first: its refusal says how to fix it
    verify_unswappable(inst.runtime_dir, owner)
    if inst.runtime_parent is not None and inst.runtime_parent_private:
        ensure_private_dir(inst.runtime_parent)
    ensure_private_dir(inst.runtime_dir)
    verify_unswappable(inst.runtime_dir, owner)  # again, now that every step exists
    ensure_private_dir(inst.childlogdir)


def _check_preamble_file(plan: Plan, inst: InstancePlan) -> None:
    from siteboot.login import file_problem
    from siteboot.plan import preamble_path

    path = preamble_path(plan.site, inst.user)
    problem = file_problem(path) if path is not None else None
    if problem:
        raise UsageError(f"{plan.site.path}: {problem}: every program of {inst.name} would fail to "
                         "start", "fix the file (or [site] preamble_file), then run the command "
                         "again")


def provision(plan: Plan, inst: InstancePlan, root: Path | None,
              secrets: SecretStore | None = None) -> Path:
    """Runtime dir, key and config of ``inst`` (all idempotent); the config's path.

    A value supervisord cannot carry is refused (exit 2) before any directory or key exists.
    The config holds the secrets its programs' environments ask for: it is 0600, like the key.
    A config whose stamp (``renderstamp``) says it was rendered from exactly what rendering it
    now would see is not rendered again.
    """
    from siteboot.keys import ensure_key
    from siteboot.render import render_preview
    from siteboot.sitefiles import secret_store
    from siteboot.venvs import with_builds

    _require_allocated(plan, inst)
    inst = with_builds(inst)  # a program whose venv has a new build: a changed program
    secrets = secrets or secret_store(inst)
    key = digest = text = None
    if os.path.lexists(inst.key_path) and os.path.lexists(inst.render_stamp_path):
        key = ensure_key(inst)
        digest = _config_inputs_digest(plan, inst, root, key, secrets)
        text = _unchanged_config(inst, digest)
    if text is None:
        render_preview(plan, inst, root)
    _check_preamble_file(plan, inst)
    prepare_runtime_dir(inst)
    if text is None:
        if key is None:
            key = ensure_key(inst)
            digest = _config_inputs_digest(plan, inst, root, key, secrets)
        text = rendered(plan, inst, root, key, secrets)
        if digest is not None:
            from siteboot.renderstamp import record

            record(inst.render_stamp_path, digest, text)
    if _read_text(inst.conf_path) != text:  # unchanged: no write (a full disk stays harmless)
        atomic_write(inst.conf_path, text, mode=0o600)
    if inst.heals:  # what its event listener watches (``healer``)
        from siteboot.healer import spec_text

        spec = spec_text(plan, inst)
        if _read_text(inst.healer_spec_path) != spec:
            atomic_write(inst.healer_spec_path, spec, mode=0o600)
    if inst.grants_deploy:  # what its deploy agent serves (``agent``)
        from siteboot.requestsdir import spec_text as agent_spec

        spec = agent_spec(plan, inst)
        if _read_text(inst.agent_spec_path) != spec:
            atomic_write(inst.agent_spec_path, spec, mode=0o600)
    return inst.conf_path


def _unchanged_config(inst: InstancePlan, digest: str | None) -> str | None:
    from siteboot.renderstamp import unchanged

    return unchanged(inst.render_stamp_path, inst.conf_path, digest) if digest else None


def _render_inputs(plan: Plan, inst: InstancePlan, key: str,
                   secrets: SecretStore | None) -> dict[str, Any]:
    """What ``render_instance`` is given besides the plan (``inst`` with its venv builds)."""
    from siteboot.content import content_digests
    from siteboot.keys import password_hash
    from siteboot.records import operator_stops
    from siteboot.render import held_programs
    from siteboot.sitefiles import secret_store

    return {"password": password_hash(key), "secrets": secrets or secret_store(inst),
            "held": held_programs(inst, operator_stops(inst)),
            "content": content_digests(plan, inst)}


def _config_inputs_digest(plan: Plan, inst: InstancePlan, root: Path | None, key: str,
                          secrets: SecretStore | None) -> str | None:
    """The digest of all ``inst``'s config is rendered from (``renderstamp``), or None when a
    secret cannot be filled in (rendering says why)."""
    import sys

    from siteboot.render import CONFIG_TEMPLATE, config_context, with_secrets
    from siteboot.renderstamp import inputs_digest
    from siteboot.resources import template_dirs

    given = _render_inputs(plan, inst, key, secrets)
    revealed, problems = with_secrets(inst, given["secrets"])
    if problems:
        return None
    context = config_context(plan, revealed, given["password"], False, given["content"])
    return inputs_digest((CONFIG_TEMPLATE, context, given["held"], sys.executable),
                         template_dirs(root))


def rendered(plan: Plan, inst: InstancePlan, root: Path | None, key: str,
             secrets: SecretStore | None = None) -> str:
    """The config of ``inst`` as the checkout renders it now: its key's hash, its secrets, the
    programs an operator stopped held, the digests of what each program runs
    (``siteboot.content``)."""
    from siteboot.render import render_instance
    from siteboot.venvs import with_builds

    inst = with_builds(inst)  # a program whose venv has a new build: a changed program
    return render_instance(plan, inst, preview=False, root=root,
                           **_render_inputs(plan, inst, key, secrets))


def provision_all(plan: Plan, inst: InstancePlan, root: Path | None) -> tuple[SiteFiles, Path]:
    """What ``inst``'s programs need before they start: its managed dirs and files, then its
    runtime dir, key and config. Nothing is touched while a template or secret is missing."""
    from siteboot.sitefiles import prepare, secret_store

    _require_allocated(plan, inst)
    secrets = secret_store(inst)
    site_files = prepare(plan, inst, root, secrets)
    return site_files, provision(plan, inst, root, secrets)


def _require_allocated(plan: Plan, inst: InstancePlan) -> None:
    """No config or file is written with an auto port of 0: supervisord would take any port."""
    unallocated = plan.unallocated(inst)
    if unallocated:
        raise InstanceError(f"{inst.name}: its auto ports are not allocated yet: "
                            f"{', '.join(unallocated)}",
                            f"`{command('up', env=inst.env, instance=inst.name)}` allocates them")


# ------------------------------------------------------------------------------------------
# Endpoints


def own_endpoint(plan: Plan, inst: InstancePlan, timeout: float = 5.0) -> Endpoint:
    """The owner's endpoint, creating the key on first need (``up``)."""
    from siteboot.keys import ensure_key

    return connect(plan, inst, timeout, key=ensure_key(inst))


def probe(endpoint: Endpoint) -> str | None:
    """None when supervisord answers and is RUNNING, else why not (an ``rpc`` reason)."""
    try:
        state = endpoint.call("supervisor.getState")
    except RpcError as exc:
        return exc.reason
    except Fault as fault:  # in its shutdown, supervisord answers every call with this fault
        return SHUTTING_DOWN if fault.faultCode == FAULT_SHUTDOWN_STATE else fault.faultString
    if state.get("statecode") != SUPERVISOR_RUNNING:
        return f"in state {state.get('statename')}"
    return None


# ------------------------------------------------------------------------------------------
# up


def each_owned(plan: Plan, instance: Selection,
               action: Callable[[InstancePlan], InstanceOutcome],
               parallel: bool = False) -> list[InstanceOutcome]:
    """``action`` under the instance's lock for each instance the invoker owns on this host;
    the others are skipped (``owned by <user>``, ``on <host>``), except one named explicitly
    (``instance``) that is not the invoker's to act on: that fails.

    ``parallel``: all instances at once (``down``: every supervisord gets its SIGTERM at once,
    and the slowest program's stop wait is paid once, not once per instance; ``up``: the
    supervisords to start get there together).
    """
    def one(inst: InstancePlan) -> InstanceOutcome:
        # named on purpose (-i), one not to act on here is a failure a CI job must see;
        # among all of them, a remark
        verdict = "failed" if instance else "skipped"
        elsewhere = plan.elsewhere(inst)
        if elsewhere:
            return InstanceOutcome(inst.name, verdict, elsewhere)
        if not plan.owns(inst):
            return InstanceOutcome(inst.name, verdict, f"owned by {inst.user}: run as {inst.user}")
        try:
            with instance_lock(plan, inst):
                return action(inst)
        except SitebootError as exc:  # one instance failing must not keep the others down
            return InstanceOutcome(inst.name, "failed", str(exc))
        except Fault as fault:  # e.g. it began to shut down, or cannot re-read its config
            return InstanceOutcome(inst.name, "failed", f"supervisord answered: {fault.faultString}")
        except OSError as exc:
            return InstanceOutcome(inst.name, "failed", describe_os_error(exc))
        except Exception as exc:
            if not _is_psutil_error(exc):
                raise
            return InstanceOutcome(inst.name, "failed", f"{type(exc).__name__}: {exc}")

    selected = plan.select(instance)
    if not parallel or len(selected) < 2:
        return [one(inst) for inst in selected]
    return concurrently(one, selected)


def _is_psutil_error(exc: BaseException) -> bool:
    """psutil's errors, without importing psutil where it was not (then none was raised)."""
    import sys

    psutil = sys.modules.get("psutil")
    return psutil is not None and isinstance(exc, psutil.Error)


def up(plan: Plan, root: Path | None, instance: Selection = None,
       timeout: float = START_TIMEOUT, replace_hung: bool = False) -> LifecycleResult:
    """Start every instance the invoker owns; the others are reported as skipped.

    ``replace_hung`` (``revive``): a supervisord of ours that does not answer even after SIGCONT
    is replaced; ``up`` leaves it alone, since its programs may still be serving.
    """
    return LifecycleResult(each_owned(
        plan, instance, lambda inst: _up_one(plan, inst, root, timeout, replace_hung),
        parallel=any(not _pidfile_alive(inst) for inst in plan.select(instance))))


def _pidfile_alive(inst: InstancePlan) -> bool:
    """Whether the pidfile names a live supervisord of the instance (a guess, for scheduling
    only): supervisords to start are started together, since each start is mostly waiting; the
    checks of running ones are computing, which threads would only slow down, one after the
    other."""
    pid = read_pidfile(inst)
    view = view_process(pid) if pid is not None else None  # a zombie is none
    return view is not None and _is_supervisord_of(view.cmdline(), inst)


def _up_one(plan: Plan, inst: InstancePlan, root: Path | None, timeout: float,
            replace_hung: bool) -> InstanceOutcome:
    running = find_supervisord(inst)
    if running is not None:
        _refuse_foreign_siteboot(plan, inst, "change")
        _refuse_new_key_while_running(inst, running)
    # wiped under a running supervisord (and not restored yet: the pidfile comes back then)
    runtime_lost = running is not None and not os.path.lexists(inst.pidfile)
    if running is None:  # a supervisord started afresh gets a new key: a leaked one dies here
        from siteboot.keys import new_key

        new_key(inst)
    endpoint = own_endpoint(plan, inst)
    if running is not None and not os.path.lexists(inst.socket_path):
        # its socket was wiped (and maybe no record says it runs): its port still answers
        endpoint = endpoint.but(url=inst.http_url)
    try:
        site_files, conf = provision_all(plan, inst, root)
    except OSError as exc:
        problem = f"cannot write its runtime files: {describe_os_error(exc)}"
        if running is not None and probe(endpoint) is None:  # serving: not a failure of it
            return InstanceOutcome(inst.name, "already running", f"still serving, but {problem}",
                                   running.pid)
        raise InstanceError(f"{inst.name}: {problem}", "free space on that file system (or fix "
                            f"its permissions), then run `{command('up', env=inst.env)}` "
                            "again") from None
    except SecretError as exc:
        # cron's `revive` has no CI variables: a serving instance keeps what it was given
        if running is not None and probe(endpoint) is None:
            return InstanceOutcome(inst.name, "already running", "still serving", running.pid,
                                   [f"{exc}; its files and config were left as they are"])
        raise
    notes = site_files.notes + _publish(inst, endpoint.key)
    if running is not None:
        why = probe(endpoint)
        if why == NOT_ANSWERING and replace_hung:
            signal_process(running, signal.SIGCONT)  # SIGSTOPped: let it answer before judging
            # an overloaded login node is slow, not hung: a long look before replacing it
            why = probe(endpoint.but(timeout=HUNG_AFTER))
        if why is None:
            if runtime_lost:
                notes += _restore_runtime(plan, inst, running)
            if any(program.port and program.autostart for program in inst.programs):
                _refuse_taken_ports(inst, _ports_to_start(
                    inst, endpoint.call("supervisor.getAllProcessInfo")))
            from siteboot.venvs import venv_changes

            stale = venv_changes(inst, running)  # before the update restarts them
            changes = apply_config(inst, endpoint, restarts(inst, site_files)).lines(inst)
            record_started(inst, site_files)
            notes += _restart_stale(inst, endpoint, stale)
            _record(plan, inst, running)
            if not changes:
                detail = "runtime dir restored" if runtime_lost else "nothing to do"
                return InstanceOutcome(inst.name, "updated" if runtime_lost else "already running",
                                       detail, running.pid, notes)
            return InstanceOutcome(inst.name, "updated", "; ".join(changes), running.pid, notes)
        if why == SHUTTING_DOWN:
            notes.append(_wait_for_shutdown(inst, running))
        elif why == NOT_RUNNING or (why == NOT_ANSWERING and replace_hung):
            # Ours by identity, but unreachable on socket and port alike, or hung: replace it.
            notes.append(f"supervisord pid {running.pid} was {why}: replaced it")
            notes += stop_instance(inst, lambda: endpoint, timeout=5.0).notes
        else:
            # Busy, stopped, or refusing this key: its programs may be fine; never kill on a guess.
            raise InstanceError(f"supervisord pid {running.pid} of {inst.name} is running but "
                                f"{why}", f"see `{command('status', env=inst.env)}`; to replace "
                                f"it: `{command('down', env=inst.env, instance=inst.name)}` then "
                                f"`{command('up', env=inst.env, instance=inst.name)}`, or "
                                f"`{command('revive', env=inst.env)}`, which replaces one that "
                                "does not answer")
    notes += stop_orphans(inst, find_orphans(inst))
    notes += clear_stale(inst, None)
    _refuse_taken_ports(inst, {inst.port: f"supervisord-{inst.name}", **_ports_to_start(inst, [])})
    record_started(inst, site_files)
    # the new supervisord is reached on its socket (whatever a record or a stale port says)
    pid = launch(inst, conf, timeout, endpoint.but(url=inst.unix_url))
    _record(plan, inst, find_supervisord(inst))
    return InstanceOutcome(inst.name, "started", f"pid {pid}, {inst.unix_url}", pid, notes)


SHUTTING_DOWN = "in state SHUTDOWN"
_HOLDING_ITS_PORT = {"RUNNING", "STARTING", "STOPPING"}  # a process in these has its port


def _ports_to_start(inst: InstancePlan, infos: list[dict[str, Any]]) -> dict[int, str]:
    """port -> program, for each program with a port that ``up`` is about to start: it should
    run (``autostart``, not stopped by an operator) and, per ``infos`` (getAllProcessInfo of the
    running supervisord, if any), does not run yet."""
    from siteboot.records import operator_stops

    held = operator_stops(inst)
    states = {info["name"]: info["statename"] for info in infos}
    return {program.port: f"program {program.name}" for program in inst.programs
            if program.port and program.autostart
            and not all(p in held for p in program.process_names())
            and not any(states.get(p) in _HOLDING_ITS_PORT for p in program.process_names())}


def _refuse_taken_ports(inst: InstancePlan, ports: dict[int, str]) -> None:
    """Refuse at once, naming who holds them, to start what needs a port that a process
    other than the instance's own listens on (it would only end in BACKOFF, then FATAL)."""
    from siteboot.ports import held_ports

    taken = held_ports(inst, ports) if ports else []
    if taken:
        raise InstanceError(
            "nothing started, a port it needs is taken:\n"
            + "\n".join(f"    {line}" for line in taken),
            "stop that process, or change the port in the site file (`port = \"auto\"` lets "
            "siteboot pick a free one)")


def _wait_for_shutdown(inst: InstancePlan, running: Any) -> str:
    """A supervisord already on its way out: let it finish (its programs' stop waits), then go on."""
    import psutil

    _, lingering = psutil.wait_procs([running], timeout=_stop_wait(inst))
    if lingering:
        raise InstanceError(f"supervisord pid {running.pid} of {inst.name} has been shutting down "
                            f"for over {_stop_wait(inst):g} s",
                            f"`{command('down', env=inst.env, instance=inst.name)}` stops it "
                            "for good")
    return f"waited for supervisord pid {running.pid} to finish shutting down"


def _restore_runtime(plan: Plan, inst: InstancePlan, running: Any) -> list[str]:
    """After a /tmp cleaner: dirs and config are back (``provision``); put back the pidfile and
    make supervisord reopen its logs (SIGUSR2). Its programs keep running. The control socket
    cannot be recreated without restarting it: until then siteboot talks to its port."""
    atomic_write(inst.pidfile, f"{running.pid}\n", mode=0o644)
    for copy in (inst.started_conf_path, inst.applied_conf_path):  # as good a guess as any
        atomic_write(copy, inst.conf_path.read_bytes(), mode=0o600)
    signal_process(running, signal.SIGUSR2)
    return [f"runtime dir {inst.runtime_dir} was lost while supervisord kept running: restored "
            f"(pidfile, config, logs reopened) without restarting programs; its control socket "
            f"returns with its next restart, until then siteboot uses 127.0.0.1:{inst.port}"]


def _record(plan: Plan, inst: InstancePlan, running: Any | None) -> None:
    """Remember what runs, so that a later site edit cannot make it invisible (``records``)."""
    if running is None:
        return
    from siteboot.records import write_start

    try:
        write_start(plan, inst, running.pid, running.create_time())
    except OSError:
        pass  # a full disk must not turn a healthy start into a failure; `status` still sees it


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@dataclass
class Applied:
    """What ``apply_config`` did to one running supervisord."""

    changes: ConfigChanges
    restarted: list[str] = field(default_factory=list)  # removed and added again
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)  # autostart = false (or held)
    file_restarts: list[str] = field(default_factory=list)  # what changed [files] restarted

    def lines(self, inst: InstancePlan) -> list[str]:
        """One line per program touched, and the server settings left for the operator."""
        by_name = {c.program: c for c in self.changes.programs}
        lines = [f"removed {name}" for name in self.removed]
        for name in self.restarted:
            keys = f" ({', '.join(by_name[name].keys)})" if name in by_name else ""
            lines.append(f"reloaded {name}{keys}, not started (autostart = false)"
                         if name in self.not_started else f"restarted {name}{keys}")
        lines += [f"added {name}" for name in self.added] + self.file_restarts
        if self.changes.server:
            lines.append(f"server settings changed ({', '.join(self.changes.server)}): apply "
                         f"with `{command('down', env=inst.env, instance=inst.name)}` then "
                         f"`{command('up', env=inst.env, instance=inst.name)}`")
        return lines

    def as_json(self) -> dict[str, Any]:
        return {"changes": self.changes.as_json(), "restarted": self.restarted,
                "added": self.added, "removed": self.removed}


def loaded_changes(inst: InstancePlan, text: str, endpoint: Endpoint | None = None) -> ConfigChanges:
    """How the config ``text`` differs from what the running supervisord has loaded: the copies
    of its start and last apply, and (``endpoint``) the programs it has in use
    (``getAllConfigInfo``, whose word on what runs beats the copies')."""
    from siteboot.changes import compare
    from siteboot.render import SITE_KEY_OF_OPTION

    running = None
    if endpoint is not None:
        running = {str(info["group"]) for info in endpoint.call("supervisor.getAllConfigInfo")
                   if info.get("inuse")}
    started = _read_text(inst.started_conf_path)
    return compare(started, _read_text(inst.applied_conf_path) or started, text, running,
                   SITE_KEY_OF_OPTION)


def apply_config(inst: InstancePlan, endpoint: Endpoint,
                 files: Mapping[str, Sequence[str]] | None = None) -> Applied:
    """Bring a running supervisord's programs up to its rewritten config, restarting exactly
    the programs that changed (each program is a group of its own).

    supervisord re-reads the file (``reloadConfig``), which says which groups are new and which
    are gone; which of the others changed is siteboot's own comparison with the copy of what was
    applied, since supervisord cannot see a rebuilt venv or a changed file (``content``) and
    would restart on changes that need no restart (``autostart``). Server settings (ports,
    paths) need a restart of supervisord itself, which is left to the operator. ``files``:
    program -> the files it reads that changed; its running processes are restarted unless
    their group was just reloaded.
    """
    from siteboot.changes import programs_of

    text = _read_text(inst.conf_path)
    current = programs_of(text)
    changes = loaded_changes(inst, text)
    applied_copy = _read_text(inst.applied_conf_path)
    known = bool(applied_copy or _read_text(inst.started_conf_path))
    slow = endpoint.but(timeout=_stop_wait(inst) + 30)
    if text and text == applied_copy and _has_exactly(endpoint, current):
        # the config it last applied, and every group of it in use: a re-read would find
        # nothing to add or remove (what changed is siteboot's comparison, empty here too)
        added, changed, removed = [], [], []
    else:
        added, changed, removed = slow.call("supervisor.reloadConfig")[0]
    in_use = [name for name in current if name not in added]
    # without a copy of what was applied, supervisord's own comparison is all there is
    wanted = set(changes.to_restart()) if known else set(changed)
    restart = [name for name in in_use if name in wanted]
    for group in removed + restart:
        slow.call("supervisor.stopProcessGroup", group, True)
        slow.call("supervisor.removeProcessGroup", group)
    for group in restart + added:
        slow.call("supervisor.addProcessGroup", group)
    _keep_applied_copy(inst)
    not_started = [name for name, options in current.items() if options.get("autostart") == "false"]
    applied = Applied(changes, restart, list(added), list(removed), not_started)
    if files:
        applied.file_restarts = _restart_for_files(inst, slow, files, set(restart + added))
    return applied


def _has_exactly(endpoint: Endpoint, groups: Mapping[str, Any]) -> bool:
    """Whether the running supervisord has exactly ``groups`` in use (an operator's
    ``supervisorctl remove`` shows here)."""
    infos = endpoint.call("supervisor.getAllProcessInfo")
    return {str(info["group"]) for info in infos} == set(groups)


def _keep_applied_copy(inst: InstancePlan) -> None:
    """The config whose programs now run; a full disk must not fail what was applied."""
    try:
        text = inst.conf_path.read_bytes()
        if not inst.applied_conf_path.exists() or inst.applied_conf_path.read_bytes() != text:
            atomic_write(inst.applied_conf_path, text, mode=0o600)
    except OSError:
        pass


def _restart_stale(inst: InstancePlan, endpoint: Endpoint, stale: list[Any]) -> list[str]:
    """Say which processes the update restarted because their venv has a new build; restart one
    it left on an old build, never silently. (One that names no build at all after the update
    has a site template that drops the environment: said, not restarted on every ``up``.)"""
    from siteboot.control import supervisor_group

    notes = []
    slow = endpoint.but(timeout=_stop_wait(inst) + 30)
    for change in stale:
        if not pid_alive(change.pid):
            notes.append(change.describe(restarted=True))
            continue
        if change.was is None:
            notes.append(change.describe(restarted=False))
            continue
        program = next(p for p in inst.programs if change.process in p.process_names())
        full = f"{supervisor_group(inst, program)}:{change.process}"
        try:
            slow.call("supervisor.stopProcess", full, True)
            slow.call("supervisor.startProcess", full, True)
        except Fault as fault:
            notes.append(change.describe(restarted=False) + f" ({fault.faultString})")
            continue
        notes.append(change.describe(restarted=True))
    return notes


_RESTARTABLE = ("RUNNING", "STARTING", "BACKOFF")


def _restart_for_files(inst: InstancePlan, endpoint: Endpoint,
                       restart: Mapping[str, Sequence[str]], reloaded: set[str]) -> list[str]:
    """Restart the running processes of the programs in ``restart`` (their files changed); a
    stopped one is left stopped, and reads the new file when it starts."""
    infos = endpoint.call("supervisor.getAllProcessInfo")
    said = []
    for name, files in restart.items():
        program = inst.program(name)
        if program is None:
            continue
        mine = [i for i in infos if i["name"] in program.process_names()]
        if any(i["group"] in reloaded for i in mine):
            continue  # restarted with its group already
        because = f"{'files' if len(files) > 1 else 'file'} {', '.join(files)} changed"
        running = [i for i in mine if i["statename"] in _RESTARTABLE]
        for info in running:
            full = f"{info['group']}:{info['name']}"
            for method, *args in (("supervisor.stopProcess", True),
                                  ("supervisor.startProcess", False)):
                try:
                    endpoint.call(method, full, *args)
                except Fault:  # it exited meanwhile, or failed to start: converge reports that
                    pass
        said.append(f"restarted {name}: {because}" if running
                    else f"{name}: {because}; not running, it reads the new one when started")
    return said


def _publish(inst: InstancePlan, key: str) -> list[str]:
    """Publish a granted key; a problem in shared_dir is reported but never keeps it down."""
    if not (inst.group and inst.shared_key_path):
        return []
    from siteboot.keys import publish_key

    try:
        publish_key(inst, key)
    except SitebootError as exc:
        return [f"members of {inst.group} cannot control it yet: {exc.message}"]
    if inst.grants_deploy:
        from siteboot.requestsdir import ensure_requests_dir

        return ensure_requests_dir(inst)
    return []


def launch(inst: InstancePlan, conf: Path, timeout: float, endpoint: Endpoint) -> int:
    """Start supervisord daemonized and wait until its RPC answers RUNNING."""
    result = run_command(supervisor_command("supervisord", conf), cwd=inst.runtime_dir,
                         output=inst.launch_log, new_session=True, timeout=timeout,
                         env=without_secrets())
    if result.returncode != 0:
        raise InstanceError(
            f"supervisord for {inst.name} "
            + (f"did not daemonize within {timeout:g} s" if result.returncode == TIMED_OUT
               else f"exited with {result.returncode} before daemonizing")
            + ":\n" + _indent(file_tail(inst.launch_log) or "(no output)"),
            f"config: {conf}")
    # What it was started with: ``up`` compares server settings against this, not the file that
    # a later ``render`` may have rewritten. A full disk must not fail a start that worked.
    try:
        for copy in (inst.started_conf_path, inst.applied_conf_path):
            atomic_write(copy, conf.read_bytes(), mode=0o600)
    except OSError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe(endpoint) is None:
            pid = read_pidfile(inst)
            return pid or 0
        time.sleep(0.05)
    raise InstanceError(
        f"supervisord for {inst.name} did not answer at {inst.unix_url} within {timeout:.0f} s; "
        f"last lines of {inst.logfile}:\n" + _indent(file_tail(inst.logfile) or "(empty)"),
        f"check the log, then `{command('down', env=inst.env, instance=inst.name)}` and "
        f"`{command('up', env=inst.env, instance=inst.name)}`")


def foreground_argv(plan: Plan, root: Path | None, instance: Selection) -> list[str]:
    """Prepare ``instance`` and return the supervisord command to exec in the foreground."""
    if not instance or len(plan.select(instance)) != 1:
        raise UsageError("--foreground needs one --instance: one supervisord per process")
    inst = plan.select(instance)[0]
    if not plan.owns(inst):
        raise UsageError(f"instance {inst.name} is owned by {inst.user}: run as {inst.user}")
    with instance_lock(plan, inst):
        site_files, conf = provision_all(plan, inst, root)
        running = find_supervisord(inst)
        if running is not None:
            raise InstanceError(f"instance {inst.name} is already running (pid {running.pid})",
                                f"stop it with `{command('down', env=inst.env, instance=inst.name)}` "
                                "first")
        clear_stale(inst, None)
        record_started(inst, site_files)
    return supervisor_command("supervisord", conf, "-n")


# ------------------------------------------------------------------------------------------
# down


def down(plan: Plan, instance: Selection = None, purge: bool = False,
         timeout: float | None = None) -> LifecycleResult:
    """Stop every instance the invoker owns; the others are reported as skipped."""
    return LifecycleResult(each_owned(plan, instance, lambda inst: _down_one(plan, inst, purge, timeout),
                                      parallel=True))


def _stop_wait(inst: InstancePlan) -> float:
    """How long supervisord may take to stop everything: the longest stopwaitsecs, and a margin."""
    return float(max(inst.stop_waits().values(), default=DEFAULT_STOP_WAIT)) + 10.0


def _refuse_foreign_siteboot(plan: Plan, inst: InstancePlan, what: str) -> None:
    """Two checkouts (or tool venvs) of one account share a site's runtime dir and key: the one
    that did not start an instance must not take it over behind the other's back."""
    from siteboot.records import started_elsewhere, this_siteboot

    record = started_elsewhere(plan, inst)
    if record is None:
        return
    here, python = this_siteboot()
    raise InstanceError(
        f"instance {inst.name} was started by the siteboot in {record.checkout} (python "
        f"{record.python}); this is {here} (python {python}): refusing to {what} it from here",
        f"use that siteboot, or move the instance deliberately: `{record.python} -I -m siteboot "
        f"down -i {inst.name} --site {plan.site.path} --env {plan.env}`, then "
        f"`{command('up', env=plan.env, instance=inst.name)}` from here (if that siteboot is "
        f"gone: remove {record.path})")


def _refuse_new_key_while_running(inst: InstancePlan, running: Any) -> None:
    """A running supervisord keeps the key it was started with: a new one would lock everyone
    out (and `down` would fall back to signals). Missing means a wrong $HOME or a lost file."""
    if os.path.lexists(inst.key_path):
        return
    raise InstanceError(
        f"supervisord pid {running.pid} of {inst.name} is running, but its key {inst.key_path} "
        "is missing: siteboot makes no new key for a running instance",
        "check $HOME (cron and `sudo -u` without -H keep another one) and the state_dir of the "
        "site file; to start it afresh with a new key: "
        f"`{command('down', env=inst.env, instance=inst.name)}` (signals)")


def _down_one(plan: Plan, inst: InstancePlan, purge: bool, timeout: float | None) -> InstanceOutcome:
    from siteboot.records import record_of, remove_start

    _refuse_foreign_siteboot(plan, inst, "stop")

    outcome = stop_instance(inst, lambda: connect(plan, inst), timeout)
    remove_start(record_of(plan, inst))
    try:
        _verify_runtime(inst)
    except FileNotFoundError:
        return outcome  # nothing left on disk
    except OwnershipError as exc:  # after a /tmp wipe, someone else's files: touch nothing
        outcome.notes.append(f"left the runtime files alone: {exc.message}")
        return outcome
    outcome.notes += clear_stale(inst, None)
    if purge:
        import shutil

        from siteboot.sitefiles import held_by_runtime_dir

        kept = held_by_runtime_dir(inst)
        if kept:  # a managed dir is never deleted, not even by a purge
            outcome.notes.append(f"left {inst.runtime_dir} in place: it holds the managed "
                                 f"dir(s) {', '.join(kept)}")
            return outcome
        shutil.rmtree(inst.runtime_dir)
        outcome.notes.append(f"purged {inst.runtime_dir}")
    return outcome


def stop_instance(inst: InstancePlan, endpoint: Callable[[], Endpoint],
                  timeout: float | None = None) -> InstanceOutcome:
    """Stop ``inst``'s supervisord, its programs and any orphans it left; forget its record.

    Over RPC when it answers (supervisord stops each program with its stopsignal and waits its
    stopwaitsecs); otherwise SIGTERM at once, which supervisord handles the same way. Whatever
    is left after that wait is killed; programs that outlive their supervisord are orphans and
    get their own stopwaitsecs.
    """
    import psutil

    running = find_supervisord(inst)  # identified by uid and command line, not by its files
    outcome = InstanceOutcome(inst.name, "not running")
    if running is not None:
        try:
            descendants = running.children(recursive=True)
        except psutil.Error:  # it exited between being found and now: nothing of it is left
            descendants = []
        how = _ask_to_shut_down(endpoint, running)
        _, lingering = psutil.wait_procs([running], timeout=timeout or _stop_wait(inst))
        if lingering:
            how += f"; still running after {timeout or _stop_wait(inst):g} s: killed"
            signal_process(running, signal.SIGKILL)
            psutil.wait_procs([running], timeout=5)
        outcome = InstanceOutcome(inst.name, "stopped", how, running.pid)
        left = [p for p in descendants if alive(p)]
        if left:  # programs that outlived it (killed supervisord, or one that ignores TERM)
            outcome.notes += stop_orphans(inst, left)
    outcome.notes += stop_orphans(inst, find_orphans(inst))
    return outcome


def _ask_to_shut_down(endpoint: Callable[[], Endpoint], running: Any) -> str:
    """``supervisor.shutdown`` over RPC, else SIGTERM (supervisord's own graceful shutdown)."""
    try:
        endpoint().call("supervisor.shutdown")
        return "shut down over RPC"
    except Fault as fault:
        if fault.faultCode == FAULT_SHUTDOWN_STATE:
            return "was already shutting down"
        why = f"RPC refused shutdown ({fault.faultString})"
    except (SitebootError, OSError) as exc:
        # Signals do the job without the key or the socket; never leave it running.
        why = f"RPC unavailable ({getattr(exc, 'reason', None) or exc})"
    signal_process(running, signal.SIGCONT)  # a stopped (SIGSTOP) one cannot act on SIGTERM
    signal_process(running, signal.SIGTERM)
    return f"{why}; sent SIGTERM"


def _verify_runtime(inst: InstancePlan) -> None:
    """The runtime dir is still the one ``up`` made: ours, real, under a safe path."""
    from siteboot.fsutil import verify_private_dir

    verify_unswappable(inst.runtime_dir, os.geteuid())
    if inst.runtime_parent is not None and inst.runtime_parent_private:
        verify_private_dir(inst.runtime_parent)
    elif inst.runtime_parent is not None and os.path.lexists(inst.runtime_parent):
        verify_shared_parent(inst.runtime_parent)
    verify_private_dir(inst.runtime_dir)


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())




# ------------------------------------------------------------------------------------------
# rotate-key


def rotate_keys(plan: Plan, root: Path | None, instance: Selection = None,
                timeout: float = START_TIMEOUT) -> LifecycleResult:
    """A new key for every instance the invoker owns; a running supervisord is restarted with
    it (its programs restart too) and a granted key is published again."""
    return LifecycleResult(each_owned(
        plan, instance, lambda inst: _rotate_one(plan, inst, root, timeout)))


def _rotate_one(plan: Plan, inst: InstancePlan, root: Path | None,
                timeout: float) -> InstanceOutcome:
    from siteboot.keys import new_key

    running = find_supervisord(inst)
    if running is None:
        key = new_key(inst)
        provision(plan, inst, root)
        return InstanceOutcome(inst.name, "rotated", "not running: it starts with the new key",
                               notes=_publish(inst, key))
    _refuse_foreign_siteboot(plan, inst, "rotate the key of")
    stopped = stop_instance(inst, lambda: connect(plan, inst), timeout=None)
    outcome = _up_one(plan, inst, root, timeout, replace_hung=False)  # starts it on a new key
    outcome.notes[:0] = stopped.notes
    if outcome.action == "started":
        outcome.action = "rotated"
        outcome.detail = (f"supervisord restarted with the new key (pid {outcome.pid}); its "
                          "programs restarted")
    return outcome


# ------------------------------------------------------------------------------------------
# Records: instances started earlier that the site no longer describes


def stop_recorded(record: StartRecord, timeout: float | None = None) -> InstanceOutcome:
    """Stop a supervisord from its start record alone (the site may not even parse any more)."""
    from siteboot.keys import read_own_key
    from siteboot.records import remove_start

    inst = record.instance_plan()

    def endpoint() -> Endpoint:
        url = inst.unix_url if os.path.lexists(inst.socket_path) else inst.http_url
        return Endpoint(url, read_own_key(inst), owner_uid=os.geteuid())

    outcome = stop_instance(inst, endpoint, timeout)
    remove_start(record.path)
    outcome.notes.insert(0, f"recorded as started from {record.site_path} (env {record.env}), "
                            f"runtime dir {record.runtime_dir}")
    return outcome
