"""One env of a site, resolved: every path, port, placeholder and owner in one place.

Everything downstream (render, keys, instances, rpc) takes a ``Plan`` and never re-reads TOML
or re-derives a path.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from siteboot.accounts import RPC_USERNAME as RPC_USERNAME  # noqa: PLC0414 (render's)
from siteboot.accounts import current_user, expand_home, this_host, uid_of
from siteboot.errors import OwnershipError, SitebootError, UsageError
from siteboot.site import (
    PORT_MAX,
    PORT_MIN,
    RUNNER_PROGRAM,
    DirSpec,
    FileSpec,
    Problem,
    Program,
    RunnerSpec,
    Site,
    default_program_options,
    instance_port_key,
    locate,
    program_port_key,
    same_host,
    text_for,
)

# AF_UNIX paths longer than this are cut by the kernel (108 bytes including the NUL).
MAX_SOCKET_PATH = 107
# An "auto" port not allocated yet (``ports.allocate`` does that for what it starts), or one of
# another account, whose record is not readable here: a preview renders it as 0.
UNALLOCATED = 0
_MAX_RECORD_BYTES = 1 << 20
# Which instances a command is about: one name, several (``-i`` repeated), or None for all.
Selection = Union[str, Sequence[str], None]


class Sealed(str):
    """A resolved text that holds secrets, which are read only when it is written.

    As a ``str`` it is the text with each secret shown as ``{secret:NAME}``, so printing it,
    putting it in an error or in JSON never shows one; ``reveal`` fills them in, and only the
    code that writes the text where the program reads it calls that.
    """

    parts: tuple[tuple[str, bool], ...]  # (text, False) or (secret name, True)

    def __new__(cls, parts: Sequence[tuple[str, bool]]) -> Sealed:
        shown = "".join(f"{{secret:{text}}}" if secret else text for text, secret in parts)
        sealed = super().__new__(cls, shown)
        sealed.parts = tuple(parts)
        return sealed

    @property
    def secret_names(self) -> list[str]:
        return list(dict.fromkeys(text for text, secret in self.parts if secret))

    def reveal(self, secret: Callable[[str], str]) -> str:
        return "".join(secret(text) if is_secret else text for text, is_secret in self.parts)


def reveal(value: str, secret: Callable[[str], str]) -> str:
    """``value`` with its secrets filled in (a plain string has none)."""
    return value.reveal(secret) if isinstance(value, Sealed) else value


@dataclass(frozen=True)
class FilePlan:
    """A ``[files.NAME]`` of an instance, resolved: written by its user before its programs
    start; a change restarts ``users`` at ``up``."""

    name: str
    template: str  # relative to the site root: templates/...
    path: Path
    mode: int
    users: tuple[str, ...]  # the programs that read it


@dataclass(frozen=True)
class DirPlan:
    """A ``[dirs.NAME]`` of an instance, resolved: created or corrected by its user."""

    name: str
    path: Path
    mode: int
    group: str | None


@dataclass(frozen=True)
class ProgramPlan:
    """A ``[programs.NAME]`` resolved for one env: its command, environment, port and options."""

    name: str
    command: str
    directory: str | None
    environment: dict[str, str]
    port: int | None
    venv: Path | None
    options: dict[str, Any]
    log_dir: Path
    files: tuple[str, ...] = ()  # the [files] it reads (restarted at `up` when one changed)

    @property
    def numprocs(self) -> int:
        return int(self.options["numprocs"])

    @property
    def autostart(self) -> bool:
        """Should run: started by ``up`` and counted by ``status``."""
        return bool(self.options["autostart"])

    @property
    def depends_on(self) -> list[str]:
        return list(self.options.get("depends_on") or [])

    @property
    def probe(self) -> dict[str, Any] | None:
        """``ready``, placeholders filled in; None: ready once RUNNING."""
        return self.options.get("ready")

    @property
    def backoff_max(self) -> int | None:
        """``restart.backoff_max``; None: no self-healing (FATAL is final)."""
        restart = self.options.get("restart")
        return int(restart["backoff_max"]) if restart else None

    @property
    def starts_with_supervisord(self) -> bool:
        """What the config says (``autostart``): one that waits for others is started by siteboot
        (or the healer) once they are ready, never by supervisord at once."""
        return self.autostart and not self.depends_on

    def process_names(self) -> list[str]:
        """The names supervisord gives this program's processes."""
        if self.numprocs == 1:
            return [self.name]
        return [f"{self.name}_{n:02d}" for n in range(self.numprocs)]

    def log_path(self, process: str, stream: str = "stdout") -> Path:
        return self.log_dir / f"{process}.{'out' if stream == 'stdout' else 'err'}.log"


@dataclass(frozen=True)
class InstancePlan:
    """One supervisord of the env: its account, port, dirs and programs; every path it uses."""

    name: str
    user: str
    port: int
    group: str | None
    runtime_parent: Path | None  # the parent of the instance dirs, or None ({instance} layout)
    runtime_parent_private: bool  # only this user's instances live there: 0700, made as needed
    runtime_dir: Path
    state_dir: Path  # the owner's
    shared_key_path: Path | None
    identifier: str
    programs: list[ProgramPlan]
    env: str
    host: str | None = None  # as declared; None: any host
    here: bool = True  # placed on the host this runs on (or on any host)
    files: list[FilePlan] = field(default_factory=list)  # written by its user, before starting
    dirs: list[DirPlan] = field(default_factory=list)  # made or corrected by its user
    grant: str = "control"  # what ``group`` grants its members (``site.GRANTS``)

    @property
    def conf_path(self) -> Path:
        return self.runtime_dir / f"supervisord-{self.name}.conf"

    def preview_path(self, folder: Path) -> Path:
        """Where ``render --out folder`` writes this instance's config: named by site, instance
        and env, so that previews of several envs (or sites) can share a folder."""
        return folder / f"supervisord-{self.identifier}.conf"

    def file_preview_path(self, folder: Path, name: str) -> Path:
        """Where ``render --out folder`` writes the preview of its ``[files.name]``."""
        return folder / f"files-{self.identifier}" / name

    @property
    def started_conf_path(self) -> Path:
        """A copy of the config supervisord was last started with."""
        return self.runtime_dir / f"supervisord-{self.name}.started.conf"

    @property
    def applied_conf_path(self) -> Path:
        """A copy of the config whose programs supervisord runs now (the last start or apply)."""
        return self.runtime_dir / f"supervisord-{self.name}.applied.conf"

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / "supervisor.sock"

    @property
    def pidfile(self) -> Path:
        return self.runtime_dir / "supervisord.pid"

    @property
    def logfile(self) -> Path:
        return self.runtime_dir / "supervisord.log"

    @property
    def launch_log(self) -> Path:
        """stdout/stderr of the launching supervisord, before it daemonizes."""
        return self.runtime_dir / "supervisord.launch.log"

    @property
    def childlogdir(self) -> Path:
        return self.runtime_dir / "logs"

    @property
    def key_path(self) -> Path:
        return self.state_dir / "keys" / f"{self.name}.key"

    @property
    def render_stamp_path(self) -> Path:
        """What the config was rendered from (``renderstamp``): unchanged inputs, no render."""
        return self.runtime_dir / f"supervisord-{self.name}.inputs.json"

    @property
    def healer_spec_path(self) -> Path:
        """What the event listener watches (``healer``): written with the config."""
        return self.runtime_dir / f"healer-{self.name}.json"

    @property
    def grants_deploy(self) -> bool:
        """Members of ``group`` may deploy to it (through its deploy agent, ``agent``)."""
        return self.grant == "deploy" and bool(self.group) and self.shared_key_path is not None

    @property
    def requests_dir(self) -> Path:
        """Where members of a deploy grant leave their requests (the owner's, mode 3770)."""
        assert self.shared_key_path is not None
        return self.shared_key_path.with_name(f"{self.name}.requests")

    @property
    def agent_spec_path(self) -> Path:
        """What the deploy agent serves (``agent``): written with the config."""
        return self.runtime_dir / f"agent-{self.name}.json"

    @property
    def agent_work_dir(self) -> Path:
        """The deploy agent's private copies of requests and its records of them (0700)."""
        return self.state_dir / "requests" / self.name

    @property
    def health_path(self) -> Path:
        """The listener's records (probe results, restart attempts), read by ``status``."""
        return self.state_dir / f"health-{self.name}.json"

    @property
    def heals(self) -> bool:
        """Whether a listener runs in it: something to probe, restart or start in order."""
        return any(p.probe or p.backoff_max or p.depends_on for p in self.programs)

    @property
    def secrets_path(self) -> Path:
        """``{secret:NAME}`` values of the owner (0600) when the environment has none."""
        return self.state_dir / "secrets.toml"

    @property
    def files_started_path(self) -> Path:
        """Content hashes of the [files] its programs last (re)started with."""
        return self.runtime_dir / "files.started.json"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    def stop_waits(self) -> dict[str, int]:
        """process name -> its program's ``stopwaitsecs``: how long a stop may take."""
        return {process: int(program.options["stopwaitsecs"]) for program in self.programs
                for process in program.process_names()}

    def program(self, name: str) -> ProgramPlan | None:
        return next((p for p in self.programs if p.name == name), None)

    def address(self, process: str) -> str:
        """supervisord's ``group:process`` name of ``process``: every program is a group of its
        own (so that supervisord's update unit is the program), named after it."""
        program = next((p for p in self.programs if process in p.process_names()), None)
        return f"{program.name if program else process}:{process}"


@dataclass(frozen=True)
class RunnerPlan:
    """``[runner]`` resolved: what to run, as whom, and where its records live."""

    instance: str  # the instance whose account runs it
    user: str
    mode: str  # "supervised" or "detached"
    executable: str  # as declared, placeholders and ~ filled (supervised: rendered as is)
    resolved: Path | None  # the executable found (PATH for a bare name); None: not found here
    config: Path
    working_directory: Path | None
    cwd: Path  # working_directory, else the owner's home
    drain_timeout: int
    state_dir: Path  # the owner's

    def argv(self, executable: str | None = None) -> list[str]:
        """``gitlab-runner run --config X [--working-directory D]``."""
        args = [executable or self.executable, "run", "--config", str(self.config)]
        if self.working_directory is not None:
            args += ["--working-directory", str(self.working_directory)]
        return args

    @property
    def record_path(self) -> Path:
        """What siteboot started: pid, start time, command line, log."""
        return self.state_dir / "runner.json"

    @property
    def log_path(self) -> Path:
        """stdout and stderr of a detached runner, appended across starts."""
        return self.state_dir / "gitlab-runner.log"

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "locks" / "runner.lock"


@dataclass(frozen=True)
class Plan:
    """One env of a site as the invoker sees it on this host: every instance resolved."""

    site: Site
    env: str
    invoker: str
    invoker_state_dir: Path
    instances: dict[str, InstancePlan]
    runner: RunnerPlan | None = None
    host: str = ""  # the host this runs on (``this_host``)
    vars: dict[str, str] = field(default_factory=dict)  # [vars] in this env (Sealed: secrets)
    ports: dict[str, int] = field(default_factory=dict)  # program -> its port in this env

    def require_runner(self) -> RunnerPlan:
        if self.runner is None:
            raise UsageError(f"site {self.site.name} declares no [runner]",
                             f"add a [runner] table to {self.site.path} (see the README)")
        return self.runner

    def instance(self, name: str) -> InstancePlan:
        if name not in self.instances:
            raise UsageError(f"site {self.site.name} has no instance '{name}'",
                             f"instances: {', '.join(self.instances)}")
        return self.instances[name]

    def select(self, names: Selection) -> list[InstancePlan]:
        """The named instances (one name or several; none: all), each once, in site order."""
        if not names:
            return list(self.instances.values())
        wanted = {self.instance(name).name for name in ([names] if isinstance(names, str) else names)}
        return [inst for inst in self.instances.values() if inst.name in wanted]

    def user_uids(self) -> set[int]:
        """The uids of the site's users that exist on this host."""
        uids = set()
        for inst in self.instances.values():
            try:
                uids.add(uid_of(inst.user))
            except UsageError:
                continue
        return uids

    def owns(self, inst: InstancePlan) -> bool:
        return inst.user == self.invoker

    def elsewhere(self, inst: InstancePlan) -> str | None:
        """``on <host>`` when ``inst`` is placed on another host than this one, else None."""
        return None if inst.here else f"on {inst.host}"

    def preamble(self, user: str) -> list[str]:
        """The shell lines run before ``user``'s programs: ``[site] preamble``, or a line that
        sources ``preamble_file`` (relative to the site file; ``~`` is ``user``'s home)."""
        return preamble_lines(self.site, user)

    def url_for(self, inst: InstancePlan) -> str:
        """How the invoker reaches ``inst``: its own over the unix socket, others over 127.0.0.1."""
        return inst.unix_url if self.owns(inst) else inst.http_url

    def lock_path(self, inst: InstancePlan) -> Path:
        return self.invoker_state_dir / "locks" / f"{inst.name}.lock"

    @property
    def deploy_lock_path(self) -> Path:
        """One deploy (or rollback) of this site and env at a time."""
        return self.invoker_state_dir / "locks" / f"deploy-{self.site.name}-{self.env}.lock"

    @property
    def releases_dir(self) -> Path:
        """The deployer's releases of this site and env: one folder each, and the pointers."""
        return self.invoker_state_dir / "releases" / f"{self.site.name}-{self.env}"

    def port_record(self, inst: InstancePlan) -> Path:
        """Where ``inst``'s owner keeps the auto ports of this site and env (``ports.allocate``)."""
        return port_record_path(inst.state_dir, self.site.name, self.env)

    def port_lock(self, inst: InstancePlan) -> Path:
        return inst.state_dir / "locks" / f"ports-{self.site.name}-{self.env}.lock"

    def unallocated(self, inst: InstancePlan | None = None) -> list[str]:
        """The auto ports of the env (of ``inst``) that have no number yet (shown as 0)."""
        found = []
        for each in [inst] if inst is not None else self.instances.values():
            if each.port == UNALLOCATED:  # a fixed port is never 0
                found.append(instance_port_key(each.name))
            found += [program_port_key(p.name) for p in each.programs if p.port == UNALLOCATED]
        return found

    def venv_path(self, name: str, user: str | None = None) -> Path:
        base = _fill(self.site.venv_dir, site=self.site.name, env=self.env,
                     user=user or self.invoker)
        return expand_home(base, user or self.invoker) / name


def _fill(template: str, **values: str) -> str:
    return template.format_map(values)


def preamble_lines(site: Site, user: str) -> list[str]:
    path = preamble_path(site, user)
    if path is None:
        return list(site.preamble)
    from siteboot.login import source_line  # only for a site with a preamble: not on every status

    return [source_line(str(path))]


def _wrapped(preamble: list[str], command: str) -> str:
    if not preamble:
        return command
    from siteboot.login import wrap_command

    return wrap_command(preamble, command)


def preamble_path(site: Site, user: str) -> Path | None:
    if site.preamble_file is None:
        return None
    return site.path.parent / expand_home(site.preamble_file, user)  # an absolute one stays


def _owned(probe: dict[str, Any], port: int | None, user: str) -> dict[str, Any]:
    """``probe`` with ``owner`` (``probes.check``: only that account may hold the port) when
    it reaches the program's own port; one on any other port may check another's service."""
    from urllib.parse import urlsplit

    target = probe.get("tcp") or probe.get("http")
    if port is None or not isinstance(target, str):
        return probe
    try:
        probed = (urlsplit(target).port if "http" in probe
                  else int(target.rpartition(":")[2]))
    except ValueError:
        return probe
    return {**probe, "owner": user} if probed == port else probe


def state_dir_of(site: Site, env: str, user: str) -> Path:
    """``user``'s state dir for ``site`` in ``env``."""
    return expand_home(_fill(site.state_dir, site=site.name, env=env, user=user), user)


def port_record_path(state_dir: Path, site: str, env: str) -> Path:
    """The port record of one site and env in a user's state dir (the site and env are in its
    name: a ``state_dir`` may be shared by several)."""
    return state_dir / f"ports-{site}-{env}.json"


def read_port_record(path: Path, owner: str, strict: bool = True) -> dict[str, int]:
    """The auto ports recorded at ``path`` (record key -> port); {} when there is none.

    Used only when it is a regular file of ``owner`` that nobody else may read or write, holding
    a record: anything else (planted, corrupted, too open) is refused with what to do, or, with
    ``strict`` off (another account's record, read only to show its ports), ignored.
    """
    import json
    import stat

    from siteboot.hints import command

    fix = f"remove {path}: `{command('up')}` allocates the auto ports again (as {owner})"
    try:
        uid = uid_of(owner)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return {}
    except (OSError, SitebootError) as exc:
        if not strict:
            return {}
        if isinstance(exc, OSError):
            raise OwnershipError(f"cannot read port record {path}: {exc.strerror or exc} "
                                 "(a symlink?)", fix) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
            if not strict:
                return {}
            raise OwnershipError(
                f"refusing port record {path}: it must be a regular file of {owner}, mode 0600 "
                f"(it is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})", fix)
        data = os.read(fd, _MAX_RECORD_BYTES)
    finally:
        os.close(fd)
    try:
        record = json.loads(data.decode("utf-8"))
        ports = record["ports"]
        if not isinstance(ports, dict) or not all(
                isinstance(k, str) and type(v) is int and PORT_MIN <= v <= PORT_MAX
                for k, v in ports.items()):
            raise ValueError("'ports' must map names to ports")
    except (ValueError, KeyError, TypeError) as exc:
        if not strict:
            return {}
        raise SitebootError(f"port record {path} is corrupted ({type(exc).__name__}: {exc})",
                            fix) from None
    return dict(ports)


def make_plan(site: Site, env: str, invoker: str | None = None, host: str | None = None) -> Plan:
    """Resolve ``site`` for ``env`` as seen by ``invoker`` (default: the current user) on
    ``host`` (default: ``this_host``).

    An ``"auto"`` port is the one recorded for its instance's user (``UNALLOCATED`` until
    ``ports.allocate`` chose it): reading the record never allocates.
    """
    if env not in site.envs:
        raise UsageError(f"site {site.name} has no env '{env}'", f"envs: {', '.join(site.envs)}")
    invoker = invoker or current_user()
    host = host or this_host()
    common = {"site": site.name, "env": env}
    # Whose instance dirs share a parent: one account's parent is private (0700); one that
    # several accounts share must be root's and sticky (``fsutil.verify_shared_parent``).
    sharing: dict[Path, set[str]] = {}
    for inst in site.instances.values():
        parent, _ = _runtime_location(site, env, inst.user or invoker, inst.name)
        if parent is not None:
            sharing.setdefault(parent, set()).add(inst.user or invoker)
    plan_instances: dict[str, InstancePlan] = {}
    allocated: dict[str, dict[str, int]] = {}  # instance -> its owner's record
    with_auto = {instance for instance, _key, auto_env in site.auto_ports() if auto_env == env}
    for inst in site.instances.values():
        user = inst.user or invoker
        values = {**common, "user": user, "instance": inst.name}
        parent, runtime_dir = _runtime_location(site, env, user, inst.name)
        state_dir = state_dir_of(site, env, user)
        shared = (expand_home(_fill(site.shared_dir, **values), user) / f"{inst.name}.key"
                  if site.shared_dir and inst.group else None)
        record = allocated[inst.name] = (
            read_port_record(port_record_path(state_dir, site.name, env), user,
                             strict=user == invoker) if inst.name in with_auto else {})
        port = inst.port[env]
        plan_instances[inst.name] = InstancePlan(
            name=inst.name, user=user,
            port=record.get(instance_port_key(inst.name), UNALLOCATED) if port is None else port,
            group=inst.group,
            runtime_parent=parent,
            runtime_parent_private=parent is None or len(sharing.get(parent, ())) < 2,
            runtime_dir=runtime_dir, state_dir=state_dir,
            shared_key_path=shared, identifier=f"{site.name}-{inst.name}-{env}",
            programs=[], env=env, host=inst.host,
            here=inst.host is None or same_host(inst.host, host), grant=inst.grant,
        )
    # each program's port in this env: its {port}, and {port:NAME} and port() for the others;
    # an "auto" one as its instance's user recorded it
    ports: dict[str, int] = {}
    for p in site.programs.values():
        if p.port:
            fixed = p.port[env]
            ports[p.name] = fixed if fixed is not None else allocated[p.instance].get(
                program_port_key(p.name), UNALLOCATED)
    plan = Plan(site, env, invoker,
                state_dir_of(site, env, invoker), plan_instances,
                vars=_resolve_vars(site, env, ports), ports=ports, host=host)
    named: dict[str, dict[str, str]] = {"var": plan.vars,
                                        "port": {k: str(v) for k, v in ports.items()},
                                        "dir": {}, "file": {}}
    for dspec in site.dirs.values():  # dirs first: a file's path may name one
        dir_plan = _dir_plan(plan, plan_instances[dspec.instance], dspec, named)
        plan_instances[dspec.instance].dirs.append(dir_plan)
        named["dir"][dspec.name] = str(dir_plan.path)
    for fspec in site.files.values():
        file_plan = _file_plan(plan, plan_instances[fspec.instance], fspec, named)
        plan_instances[fspec.instance].files.append(file_plan)
        named["file"][fspec.name] = str(file_plan.path)
    for program in site.programs.values():
        inst_plan = plan_instances[program.instance]
        inst_plan.programs.append(_program_plan(plan, inst_plan, program, named))
    if site.runner is not None:
        runner = _runner_plan(plan, plan_instances[site.runner.instance], site.runner)
        plan = dataclasses.replace(plan, runner=runner)
        if runner.mode == "supervised":
            plan_instances[runner.instance].programs.append(
                _runner_program(runner, plan_instances[runner.instance], plan.preamble(runner.user)))
    return plan


def _runtime_location(site: Site, env: str, user: str, instance: str) -> tuple[Path | None, Path]:
    """(the parent of the instance dirs or None, the instance's runtime dir)."""
    runtime = expand_home(_fill(site.runtime_dir, site=site.name, env=env, user=user,
                                instance=instance), user)
    if "{instance}" in site.runtime_dir:
        return None, runtime
    return runtime, runtime / instance


def _program_plan(plan: Plan, inst: InstancePlan, program: Program,
                  named: Mapping[str, Mapping[str, str]]) -> ProgramPlan:
    port = plan.ports.get(program.name)
    venv = plan.venv_path(program.venv, inst.user) if program.venv else None
    values: dict[str, Any] = {
        "port": port, "env": plan.env, "site": plan.site.name, "instance": inst.name,
        "runtime_dir": inst.runtime_dir, "state_dir": inst.state_dir, "venv": venv,
        "python": sys.executable,
    }
    lookup = _lookup({k: str(v) for k, v in values.items() if v is not None}, named)
    options = dict(program.options)
    directory = options.pop("directory")
    if options.get("ready"):  # a command probe is a command line: quoted as `command` is
        options["ready"] = _owned({k: _expand(v, lookup, quote=shlex.quote if k == "command"
                                              else None)
                                   if isinstance(v, str) else v for k, v in options["ready"].items()},
                                  port, inst.user)
    return ProgramPlan(
        name=program.name,
        command=_wrapped(plan.preamble(inst.user),
                         _expand(text_for(program.command, plan.env), lookup, quote=shlex.quote)),
        directory=_expand(text_for(directory, plan.env), lookup) if directory else None,
        environment={k: _expand(text_for(v, plan.env), lookup)
                     for k, v in program.environment.items()},
        port=port, venv=venv, options=options, log_dir=inst.childlogdir,
        files=tuple(program.files),
    )


def _owner_values(plan: Plan, inst: InstancePlan) -> dict[str, str]:
    """The placeholders of a managed file's or dir's path: its instance's."""
    return {"env": plan.env, "site": plan.site.name, "instance": inst.name, "user": inst.user,
            "state_dir": str(inst.state_dir), "runtime_dir": str(inst.runtime_dir)}


def _dir_plan(plan: Plan, inst: InstancePlan, spec: DirSpec,
              named: Mapping[str, Mapping[str, str]]) -> DirPlan:
    lookup = _lookup(_owner_values(plan, inst), named)
    group = _expand(text_for(spec.group, plan.env), lookup) if spec.group is not None else None
    return DirPlan(spec.name, expand_home(_expand(text_for(spec.path, plan.env), lookup), inst.user),
                   spec.mode, group)


def _file_plan(plan: Plan, inst: InstancePlan, spec: FileSpec,
               named: Mapping[str, Mapping[str, str]]) -> FilePlan:
    lookup = _lookup(_owner_values(plan, inst), named)
    users = tuple(p.name for p in plan.site.programs.values() if spec.name in p.files)
    return FilePlan(spec.name, spec.template,
                    expand_home(_expand(text_for(spec.path, plan.env), lookup), inst.user),
                    spec.mode, users)


def _resolve_vars(site: Site, env: str, ports: Mapping[str, int]) -> dict[str, str]:
    """``[vars]`` in ``env``; a var may name others (validation has ruled out cycles)."""
    resolved: dict[str, str] = {}
    plain = _lookup({"env": env, "site": site.name}, {"port": {k: str(v) for k, v in ports.items()}})

    def lookup(name: str, arg: str) -> str:
        return var(arg) if name == "var" and arg else plain(name, arg)

    def var(name: str) -> str:
        if name not in resolved:
            resolved[name] = _expand(text_for(site.vars[name], env), lookup)
        return resolved[name]

    for name in site.vars:
        var(name)
    return resolved


Lookup = Callable[[str, str], str]


def _lookup(plain: Mapping[str, str], named: Mapping[str, Mapping[str, str]]) -> Lookup:
    """``{name}`` from ``plain``, ``{kind:NAME}`` from ``named[kind]``; a ``{secret:NAME}`` is
    left sealed (read when written). Validation (site.py) has checked that each is defined."""
    def lookup(name: str, arg: str) -> str:
        if not arg:
            return plain[name]
        if name == "secret":
            return Sealed([(arg, True)])
        return named[name][arg]

    return lookup


def _expand(text: str, lookup: Lookup, quote: Callable[[str], str] | None = None) -> str:
    """``text`` with its placeholders filled (``quote``d, for a command line); ``Sealed`` when
    a secret is among them."""
    parts: list[tuple[str, bool]] = []
    import string

    for literal, name, spec, _conversion in string.Formatter().parse(text):
        if literal:
            parts.append((literal, False))
        if name is None:
            continue
        value = lookup(name, spec or "")
        if isinstance(value, Sealed):  # never quoted: validation keeps secrets off command lines
            parts.extend(value.parts)
        else:
            parts.append((quote(value) if quote else value, False))
    if any(secret for _text, secret in parts):
        return Sealed(parts)
    return "".join(text for text, _secret in parts)


def resolved_problems(site: Site) -> list[Problem]:
    """What only shows once each env is resolved: a managed path that is not absolute, a dir
    declared twice with different modes, groups or owners, a file written from two entries."""
    problems: list[Problem] = []
    for env in site.envs:
        plan = make_plan(site, env)
        dirs: dict[Path, tuple[str, str, DirPlan]] = {}
        files: dict[Path, str] = {}
        for inst in plan.instances.values():
            for dplan in inst.dirs:
                where = locate(site.path, f"dirs.{dplan.name}", "path")
                if _home_elsewhere(dplan.path):
                    continue
                if not dplan.path.is_absolute():
                    problems.append(Problem("error", where, f"'path' is {str(dplan.path)!r} in "
                                            f"env {env}: it must be absolute"))
                    continue
                first = dirs.setdefault(dplan.path, (dplan.name, inst.user, dplan))
                if first[0] != dplan.name:
                    problems += _dir_clash(where, env, first, (dplan.name, inst.user, dplan))
            for fplan in inst.files:
                where = locate(site.path, f"files.{fplan.name}", "path")
                if _home_elsewhere(fplan.path):
                    continue
                if not fplan.path.is_absolute():
                    problems.append(Problem("error", where, f"'path' is {str(fplan.path)!r} in "
                                            f"env {env}: it must be absolute"))
                elif files.setdefault(fplan.path, fplan.name) != fplan.name:
                    problems.append(Problem("error", where, f"file {fplan.name} and file "
                                            f"{files[fplan.path]} are both {fplan.path} in env "
                                            f"{env}: one file, one template"))
    return list({str(p): p for p in problems}.values())


def _home_elsewhere(path: Path) -> bool:
    """``~user/...`` of an account this host does not have: it resolves where that account is."""
    return str(path).startswith("~")


def _dir_clash(where: str, env: str, first: tuple[str, str, DirPlan],
               second: tuple[str, str, DirPlan]) -> list[Problem]:
    (name_a, user_a, a), (name_b, user_b, b) = first, second
    said = f"dir {name_b} and dir {name_a} are both {b.path} in env {env}"
    if (a.mode, a.group) != (b.mode, b.group):
        def said_mode(d: DirPlan) -> str:
            return f"mode {d.mode:04o}" + (f" group {d.group}" if d.group else "")

        return [Problem("error", where, f"{said}, with {said_mode(b)} and {said_mode(a)}: "
                        "declare it once, with one mode")]
    if user_a != user_b:
        return [Problem("error", where, f"{said}, made by {user_b} and by {user_a}: only its "
                        "owner can correct it; declare it once")]
    return []


def _runner_plan(plan: Plan, inst: InstancePlan, spec: RunnerSpec) -> RunnerPlan:
    values = {"site": plan.site.name, "env": plan.env, "user": inst.user,
              "state_dir": str(inst.state_dir)}

    def path(text: str) -> Path:
        return expand_home(_fill(text, **values), inst.user)

    executable = _fill(spec.executable, **values)
    if "/" in executable:
        executable = str(path(executable))
        resolved: Path | None = Path(executable)
    else:
        import shutil

        found = shutil.which(executable)
        resolved = Path(found) if found else None
    working = path(spec.working_directory) if spec.working_directory else None
    return RunnerPlan(
        instance=inst.name, user=inst.user, mode=spec.mode, executable=executable,
        resolved=resolved, config=path(spec.config), working_directory=working,
        cwd=working or expand_home("~", inst.user), drain_timeout=spec.drain_timeout,
        state_dir=inst.state_dir,
    )


def _runner_program(runner: RunnerPlan, inst: InstancePlan, preamble: list[str]) -> ProgramPlan:
    """A supervised runner: one more program of its instance, stopped the way GitLab drains."""
    options = default_program_options()
    options.pop("directory")
    # QUIT: finish running jobs, take no new ones; supervisord kills only after drain_timeout.
    options.update(stopsignal="QUIT", stopwaitsecs=runner.drain_timeout, autorestart="true",
                   redirect_stderr=True)
    return ProgramPlan(
        name=RUNNER_PROGRAM, command=_wrapped(preamble, shlex.join(runner.argv())),
        directory=str(runner.cwd),
        environment={}, port=None, venv=None, options=options, log_dir=inst.childlogdir,
    )


def socket_path_problem(inst: InstancePlan) -> str | None:
    length = len(os.fsencode(str(inst.socket_path)))
    if length > MAX_SOCKET_PATH:
        return (f"socket path {inst.socket_path} is {length} bytes; unix sockets allow "
                f"{MAX_SOCKET_PATH}: choose a shorter runtime_dir")
    return None
