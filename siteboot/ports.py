"""The port matrix: listing it, checking it across sites, and probing what is bound on this host."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from siteboot.plan import make_plan, resolved_problems, this_host
from siteboot.site import Problem, Site, parse_site, port_clashes, port_host, same_host


def matrix(site: Site) -> dict[str, dict[str, int]]:
    """``{name: {env: port}}``: programs first, then ``supervisord-<instance>`` rows."""
    rows: dict[str, dict[str, int]] = {}
    for program in site.programs.values():
        if program.port:
            rows[program.name] = dict(program.port)
    for inst in site.instances.values():
        rows[f"supervisord-{inst.name}"] = dict(inst.port)
    return rows


@dataclass(frozen=True)
class Listener:
    port: int
    pid: int | None
    user: str | None
    name: str | None


ListenerProbe = Callable[[set[int]], list[Listener]]


def probe_listeners(ports: set[int]) -> list[Listener]:
    """Who listens on ``ports`` on this host (pid and user only where the OS lets us see them)."""
    import psutil

    found: list[Listener] = []
    try:
        connections = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:  # pragma: no cover - not on Linux
        return found
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port not in ports:
            continue
        user = name = None
        if conn.pid:
            try:
                proc = psutil.Process(conn.pid)
                user, name = proc.username(), proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        found.append(Listener(conn.laddr.port, conn.pid, user, name))
    return found


def _site_config_paths(site: Site) -> set[str]:
    paths = set()
    for env in site.envs:
        for inst in make_plan(site, env).instances.values():
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
    a process outside the site: a warning (or error if strict)."""
    here = this_host()
    owners: dict[int, tuple[str, str]] = {
        port: (owner, env) for owner, env, port in site.port_users()
        if (envs is None or env in envs) and _placed_here(site, owner, here)}
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
        if listener.pid:
            who = f"pid {listener.pid} ({listener.name or '?'}, user {listener.user or '?'})"
        else:
            who = "a process of another user (pid not visible)"
        problems.append(Problem(level, f"{site.path}",
                                f"port {listener.port} of {owner} ({env}) is in use on this host "
                                f"by {who}"))
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
        problems.extend(resolved_problems(site))
    if len(sites) > 1:
        problems.extend(port_clashes(sites))
    for site in sites:
        problems.extend(in_use_problems(site, "error" if strict else "warning", probe, ours))
    return CheckResult([str(p) for p in paths], problems)


def foreign_holder(port: int, config_paths: set[str], probe: ListenerProbe = probe_listeners,
                   ours: Callable[[int, set[str]], bool] = belongs_to_site) -> str | None:
    """Who holds ``port`` if not a process of the supervisords with ``config_paths``, said as
    an operator needs it (pid, command, user); None when it is free or ours."""
    for listener in probe({port}):
        if listener.pid and ours(listener.pid, config_paths):
            continue
        if listener.pid:
            return (f"port {port} is held by pid {listener.pid} ({listener.name or '?'}, "
                    f"user {listener.user or '?'}), not by this site")
        return f"port {port} is held by a process of another user (pid not visible)"
    return None
