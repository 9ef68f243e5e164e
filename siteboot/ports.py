"""The port matrix: listing it, checking it across sites, probing what is bound on this host,
and allocating ``"auto"`` ports.

Auto ports are chosen once per user, site, env and program (or instance) and kept in a port
record in that user's state dir (``Plan.port_record``); ``plan`` reads it, so everything
downstream sees numbers. Only ``allocate`` writes it, under a lock: two ``init`` at once agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from siteboot.accounts import this_host
from siteboot.errors import InstanceError, SitebootError
from siteboot.hints import command
from siteboot.plan import (
    UNALLOCATED,
    InstancePlan,
    Plan,
    Selection,
    make_plan,
    port_record_path,
    read_port_record,
    resolved_problems,
    state_dir_of,
)
from siteboot.site import (
    Problem,
    Site,
    instance_port_key,
    parse_site,
    port_clashes,
    port_host,
    program_port_key,
    same_host,
)

# Where auto ports are chosen: above the well-known and most registered service ports, below
# Linux's ephemeral range (32768-60999), from which outgoing connections take theirs.
AUTO_PORTS = range(20000, 32768)
ALLOCATION_LOCK_TIMEOUT = 60.0
_LOOK_FOR_A_LOST_PORT = 32  # how many of a program's first ports to look for it on
AUTO_MARK = " (auto)"  # an allocated port's owner, as check names it


def matrix(site: Site, plans: Sequence[Plan] = ()) -> dict[str, dict[str, int | None]]:
    """``{name: {env: port}}``: programs first, then ``supervisord-<instance>`` rows. An auto
    port is None, or its number where one of ``plans`` (one per env) has it allocated."""
    rows: dict[str, dict[str, int | None]] = {}
    for program in site.programs.values():
        if program.port:
            rows[program.name] = dict(program.port)
    for inst in site.instances.values():
        rows[f"supervisord-{inst.name}"] = dict(inst.port)
    for plan in plans:
        for _key, name, port in auto_rows(plan):
            rows[name][plan.env] = port or None
    return rows


def auto_rows(plan: Plan) -> list[tuple[str, str, int]]:
    """(record key, matrix row, port) of each auto port of the plan's env as the plan resolved
    it (``UNALLOCATED``: not allocated yet, or another account's)."""
    rows = []
    for inst in plan.instances.values():
        if plan.site.instances[inst.name].port[plan.env] is None:
            rows.append((instance_port_key(inst.name), instance_port_key(inst.name), inst.port))
        for program in inst.programs:
            declared = plan.site.programs.get(program.name)
            if declared is not None and declared.port and declared.port[plan.env] is None:
                rows.append((program_port_key(program.name), program.name,
                             program.port or UNALLOCATED))
    return rows


@dataclass(frozen=True)
class Listener:
    port: int
    pid: int | None
    user: str | None
    name: str | None
    command: str | None = None  # its command line, shortened

    def describe(self) -> str:
        """Who it is, as an operator needs it: pid, command, user."""
        if self.pid:
            return f"pid {self.pid} ({self.command or self.name or '?'}, user {self.user or '?'})"
        if self.user:
            return f"a process of user {self.user} (pid not visible)"
        return "a process of another user (pid not visible)"


ListenerProbe = Callable[[set[int]], list[Listener]]
_COMMAND_WIDTH = 120


def probe_listeners(ports: set[int]) -> list[Listener]:
    """Who listens on ``ports`` on this host: pid and command where the OS lets us see them,
    the user always (from the kernel's socket table)."""
    if not ports:
        return []
    from siteboot.probes import TCP_LISTEN, tcp_sockets

    table = tcp_sockets()
    if table is not None and not any(state == TCP_LISTEN and local in ports
                                     for local, _remote, state, _uid in table):
        return []  # nobody listens: no need to search every process's sockets for a holder
    import psutil

    from siteboot.fsutil import owner_name

    found: list[Listener] = []
    try:
        connections = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:  # pragma: no cover - not on Linux
        return found
    uids: dict[int, int] | None = None
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port not in ports:
            continue
        user = name = command = None
        if conn.pid:
            try:
                proc = psutil.Process(conn.pid)
                user, name = proc.username(), proc.name()
                command = " ".join(" ".join(proc.cmdline()).split()) or None  # one line
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        else:  # another account's socket: its pid is hidden from us, its owner is not
            if uids is None:
                uids = {local: uid for local, _remote, state, uid in tcp_sockets() or []
                        if state == TCP_LISTEN}
            if conn.laddr.port in uids:
                user = owner_name(uids[conn.laddr.port])
        if command and len(command) > _COMMAND_WIDTH:
            command = command[:_COMMAND_WIDTH - 3] + "..."
        found.append(Listener(conn.laddr.port, conn.pid, user, name, command))
    return found


def _site_config_paths(site: Site) -> set[str]:
    paths = set()
    for env in site.envs:
        try:
            plan = make_plan(site, env)
        except SitebootError:  # a refused port record: `check` reports it on its own
            continue
        for inst in plan.instances.values():
            paths.add(str(inst.conf_path))
    return paths


def belongs_to_site(pid: int, config_paths: set[str]) -> bool:
    """True if ``pid`` is one of the site's supervisords or runs under one."""
    import psutil

    from siteboot.proc import is_supervisord

    try:
        proc: Any = psutil.Process(pid)
        while proc is not None:
            cmdline = proc.cmdline()
            if is_supervisord(cmdline) and config_paths & set(cmdline):
                return True
            proc = proc.parent()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return False


def _placed_here(site: Site, owner: str, here: str) -> bool:
    host = port_host(site, owner)
    return host is None or same_host(host, here)


def in_use_problems(site: Site, level: str, probe: ListenerProbe = probe_listeners,
                    ours: Callable[[int, set[str]], bool] = belongs_to_site,
                    envs: set[str] | None = None) -> list[Problem]:
    """A port of the site (of ``envs``, default all; of instances placed on this host) bound by
    a process outside the site: a warning (or error if strict). Allocated auto ports count."""
    here = this_host()
    owners: dict[int, tuple[str, str]] = {
        port: (owner, env) for owner, env, port in site.port_users() + allocated_users(site)[0]
        if (envs is None or env in envs) and _placed_here(site, owner.removesuffix(AUTO_MARK), here)}
    listeners = probe(set(owners)) if owners else []
    if not listeners:
        return []
    config_paths = _site_config_paths(site)
    problems = []
    reported: set[int] = set()
    for listener in listeners:
        if listener.port in reported or (listener.pid and ours(listener.pid, config_paths)):
            continue
        reported.add(listener.port)
        owner, env = owners[listener.port]
        problems.append(Problem(level, f"{site.path}",
                                f"port {listener.port} of {owner} ({env}) is in use on this host "
                                f"by {listener.describe()}"))
    return problems


@dataclass
class CheckResult:
    sites: list[str]
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def exit_code(self) -> int:
        from siteboot.errors import EXIT_OK, EXIT_USAGE

        return EXIT_USAGE if self.errors else EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {
            "sites": self.sites,
            "ok": not self.errors,
            "errors": [str(p) for p in self.errors],
            "warnings": [str(p) for p in self.warnings],
        }


def check(paths: Sequence[Path], strict: bool = False, probe: ListenerProbe = probe_listeners,
          ours: Callable[[int, set[str]], bool] = belongs_to_site) -> CheckResult:
    """Validate every site in ``paths``, then clashes between them, then the live host."""
    from siteboot.errors import SiteFileError

    problems: list[Problem] = []
    sites: list[Site] = []
    for path in paths:
        try:
            site, site_problems = parse_site(path)
        except SiteFileError as exc:  # unreadable or not TOML: nothing further to check
            problems.extend(Problem("error", str(path), p) for p in exc.problems)
            continue
        problems.extend(site_problems)
        if site is not None and not any(p.level == "error" for p in site_problems):
            sites.append(site)
    for site in sites:
        try:
            problems.extend(resolved_problems(site))
        except SitebootError:  # a refused port record: allocation_problems says which
            pass
    if len(sites) > 1:
        problems.extend(port_clashes(sites))
    for site in sites:
        problems.extend(allocation_problems(site))
        problems.extend(in_use_problems(site, "error" if strict else "warning", probe, ours))
    return CheckResult([str(p) for p in paths], problems)


def foreign_holder(port: int, config_paths: set[str], probe: ListenerProbe = probe_listeners,
                   ours: Callable[[int, set[str]], bool] = belongs_to_site) -> str | None:
    """Who holds ``port`` if not a process of the supervisords with ``config_paths``, said as
    an operator needs it (pid, command, user); None when it is free or ours."""
    for listener in probe({port}):
        if listener.pid and ours(listener.pid, config_paths):
            continue
        return f"port {port} is held by {listener.describe()}" + (
            ", not by this site" if listener.pid else "")
    return None


def held_by_instance(pid: int, inst: InstancePlan, process: str | None = None) -> bool:
    """``pid`` is ``inst``'s supervisord or runs under it, or is a program an earlier
    supervisord of it left behind (``up`` stops those before it starts anything); with
    ``process``, it is (or runs under) that process of it."""
    import os

    import psutil

    try:
        proc = psutil.Process(pid)
        if process is not None:  # supervisord names each process in its environment
            return bool(proc.environ().get("SUPERVISOR_PROCESS_NAME") == process
                        and held_by_instance(pid, inst))
        if belongs_to_site(pid, {str(inst.conf_path)}):
            return True
        return bool(proc.uids().real == os.geteuid()
                    and proc.environ().get("SUPERVISOR_SERVER_URL") == inst.unix_url)
    except (psutil.Error, OSError):
        return False


InstanceHolds = Callable[[int, InstancePlan, Optional[str]], bool]


def held_ports(inst: InstancePlan, ports: Mapping[int, str], probe: ListenerProbe = probe_listeners,
               held: InstanceHolds = held_by_instance) -> list[str]:
    """One line for each of ``ports`` (port -> what it is for) that a process other than
    ``inst``'s own listens on, naming that process (pid, command, user)."""
    lines = []
    reported: set[int] = set()
    for listener in sorted(probe(set(ports)), key=lambda found: found.port):
        if listener.port in reported or (listener.pid and held(listener.pid, inst, None)):
            continue
        reported.add(listener.port)
        lines.append(f"port {listener.port} ({ports[listener.port]}) is held by "
                     f"{listener.describe()}")
    return lines


# ------------------------------------------------------------------------------------------
# Auto ports


@dataclass
class Allocation:
    """The plan with every auto port of the invoker's instances allocated, and what changed
    (instance -> notes: ports chosen, or moved away from a holder)."""

    plan: Plan
    notes: dict[str, list[str]] = field(default_factory=dict)


def port_is_free(port: int) -> bool:
    """Nothing on this host holds ``port`` on any address (IPv4 or IPv6), listening or not."""
    import socket

    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 here
            continue
        try:
            sock.bind((address, port))
        except OSError:
            return False
        finally:
            sock.close()
    return True


def allocate(plan: Plan, instance: Selection = None, probe: ListenerProbe = probe_listeners,
             held: InstanceHolds = held_by_instance,
             free: Callable[[int], bool] = port_is_free) -> Allocation:
    """Give every auto port of the invoker's instances a number, once, and keep it in the
    invoker's port record (0600, written atomically, under a lock); those of ``instance``
    (default: all) are also moved when they can no longer be used.

    A recorded port stays as it is, across restarts and reboots, unless it can no longer be
    used: a process outside the instance holds it (another account squatted it while it was
    not running), or the site made it a fixed port since. Then a program's port moves (``up``
    restarts the program on its new one) and so does a stopped instance's, each with a note
    naming why; a running supervisord keeps its port (a note says how to move it). A new port
    is the first free one of ``AUTO_PORTS`` from a point that depends on user, site, env and
    name (so accounts rarely meet, and a lost record finds the same ports again), not used by
    a fixed port of the site or another auto port of the invoker's in this site.
    """
    # every auto port of the invoker's gets a number ({port:NAME} may name one of another
    # instance); only those of the selected instances move
    wanted = [(name, key) for name, key, env in plan.site.auto_ports()
              if env == plan.env and plan.owns(plan.instances[name]) and plan.instances[name].here]
    if not wanted:
        return Allocation(plan)
    selected = {inst.name for inst in plan.select(instance)}
    from siteboot.fsutil import atomic_write, ensure_private_dir, flock

    owned = plan.instances[wanted[0][0]]  # the invoker's: every one shares its state dir
    path, lock = plan.port_record(owned), plan.port_lock(owned)
    ensure_private_dir(owned.state_dir)
    ensure_private_dir(lock.parent)
    notes: dict[str, list[str]] = {}
    with flock(lock, timeout=ALLOCATION_LOCK_TIMEOUT, what="the port record", error=InstanceError):
        record = read_port_record(path, plan.invoker)
        before = dict(record)
        keep = {key for name, key, env in plan.site.auto_ports()
                if env == plan.env and plan.owns(plan.instances[name])}
        for stale in set(record) - keep:  # no longer an auto port of the site: free it
            del record[stale]
        fixed = {port for _owner, _env, port in plan.site.port_users()}
        elsewhere = _other_envs(plan)
        listeners: dict[int, list[Listener]] = {}
        for listener in probe({record[key] for name, key in wanted
                               if key in record and name in selected}):
            listeners.setdefault(listener.port, []).append(listener)
        for name, key in wanted:
            inst = plan.instances[name]
            current = record.get(key)
            taken = fixed | elsewhere | {port for other, port in record.items() if other != key}
            if current is None:  # new, or its record was lost (a wiped state dir) while it runs
                current = _still_running_on(plan, inst, key, taken, probe, held)
                if current is not None:
                    notes.setdefault(name, []).append(
                        f"auto port of {key}: {current}, where it runs (its port record was lost)")
            if current is not None:
                holders = [found for found in listeners.get(current, [])
                           if not (found.pid and held(found.pid, inst, None))]
                why = (f"{current} is now a fixed port of the site" if current in fixed else
                       f"{current} is allocated to another too" if current in taken else
                       f"{current} is held by {holders[0].describe()}" if holders else None)
                running = key == instance_port_key(name) and len(holders) < len(
                    listeners.get(current, []))
                if running and why is not None and name in selected:
                    notes.setdefault(name, []).append(
                        f"auto port of {key}: {why}; it keeps it while it runs: "
                        f"`{command('down', env=plan.env, instance=name)}` then "
                        f"`{command('up', env=plan.env, instance=name)}` moves it")
                if why is None or running or name not in selected:
                    record[key] = current
                    continue
            port = _choose(plan, key, taken, free)
            record[key] = port
            notes.setdefault(name, []).append(
                f"auto port of {key}: {port}" if current is None else
                f"auto port of {key}: {why}: moved to {port}")
        if record != before:
            import json

            document = {"site": plan.site.name, "env": plan.env, "user": plan.invoker,
                        "ports": dict(sorted(record.items()))}
            atomic_write(path, json.dumps(document, indent=2) + "\n", mode=0o600)
    # read again even when nothing changed here: another `up` may have allocated meanwhile
    return Allocation(make_plan(plan.site, plan.env, plan.invoker, plan.host), notes)


def _other_envs(plan: Plan) -> set[int]:
    """The invoker's auto ports of the site's other envs (which may run beside this one)."""
    ports: set[int] = set()
    for env in plan.site.envs:
        if env != plan.env:
            path = port_record_path(state_dir_of(plan.site, env, plan.invoker), plan.site.name, env)
            ports.update(read_port_record(path, plan.invoker, strict=False).values())
    return ports


def _still_running_on(plan: Plan, inst: InstancePlan, key: str, taken: set[int],
                      probe: ListenerProbe, held: InstanceHolds) -> int | None:
    """The port a running supervisord (its start record says which) or program of ``inst``
    holds, when its port record was lost: its auto port still. A program is looked for among
    the first ports it would be given (the ones before its own were busy then)."""
    from siteboot.records import is_running, read_start, record_of

    started = read_start(record_of(plan, inst))
    if started is None or not is_running(started):  # nothing of it runs: a new port it is
        return None
    if key == instance_port_key(inst.name):
        return started.port or None
    process = key.removeprefix(program_port_key(""))
    first = [port for port in _candidates(plan, key)[:_LOOK_FOR_A_LOST_PORT] if port not in taken]
    found = [listener.port for listener in probe(set(first))
             if listener.pid and held(listener.pid, inst, process)]
    return min(found, key=first.index) if found else None


def _candidates(plan: Plan, key: str) -> list[int]:
    """``AUTO_PORTS`` from a point that depends on user, site, env and name: accounts rarely
    meet, and the same name finds the same port again."""
    import zlib

    seed = "\0".join((plan.invoker, plan.site.name, plan.env, key))
    start = zlib.crc32(seed.encode()) % len(AUTO_PORTS)
    return [*AUTO_PORTS[start:], *AUTO_PORTS[:start]]


def _choose(plan: Plan, key: str, taken: set[int], free: Callable[[int], bool]) -> int:
    for port in _candidates(plan, key):
        if port not in taken and free(port):
            return port
    raise InstanceError(f"no free port left in {AUTO_PORTS[0]}-{AUTO_PORTS[-1]} for {key}",
                        "free some, or give it a fixed port in the site file")


def allocated_users(site: Site) -> tuple[list[tuple[str, str, int]], list[Problem]]:
    """The allocated auto ports of ``site`` as ``Site.port_users`` lists fixed ones (owner
    label, env, port), as the invoker sees them; and a problem for each env whose port record
    is refused."""
    rows: list[tuple[str, str, int]] = []
    problems: list[Problem] = []
    if not site.auto_ports():
        return rows, problems
    for env in site.envs:
        try:
            plan = make_plan(site, env)
        except SitebootError as exc:
            problems.append(Problem("error", str(site.path), f"env {env}: {exc}"))
            continue
        rows += [(key + AUTO_MARK, env, port) for key, _name, port in auto_rows(plan) if port]
    return rows, problems


def allocation_problems(site: Site) -> list[Problem]:
    """A port record that cannot be used (an error), and allocated ports that a site edit made
    clash (a warning: ``up`` moves them)."""
    rows, problems = allocated_users(site)
    seen = {port: f"{owner} ({env})" for owner, env, port in site.port_users()}
    for owner, env, port in rows:
        if port in seen:
            problems.append(Problem("warning", str(site.path),
                                    f"port {port} of {owner} ({env}) is also used by {seen[port]}: "
                                    f"`{command('up')}` allocates it another"))
        else:
            seen[port] = f"{owner} ({env})"
    return problems
