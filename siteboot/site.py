"""Site files: TOML in, a validated ``Site`` model out.

Every key of every table is declared once below (``Key``: type, default, description). The same
declarations validate site files, render the README's reference table (``reference_markdown``)
and decide which program keys pass through to supervisord.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from siteboot.errors import SiteFileError, did_you_mean

PORT_MIN = 1024
PORT_MAX = 65535
AUTO = "auto"  # a port siteboot allocates (``ports.allocate``); None in the model
PLACEHOLDERS = ("port", "env", "site", "instance", "runtime_dir", "state_dir", "venv", "python")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIGNALS = ("TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2")
_BYTE_SIZE_RE = re.compile(r"[0-9]+(KB|MB|GB)?", re.IGNORECASE)  # supervisord's byte_size


@dataclass(frozen=True)
class Key:
    """One key of a site-file table, declared once."""

    name: str
    kind: str  # str, int, bool, str_list, str_table, port_table, or choice
    default: Any
    doc: str
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    supervisor: str | None = None  # the supervisord program option this key sets

    @property
    def type_name(self) -> str:
        if self.kind == "choice":
            return " | ".join(f'"{c}"' for c in self.choices)
        return {
            "str": "string",
            "int": "integer",
            "bool": "boolean",
            "str_list": "list of strings",
            "str_table": "table of strings",
            "port_table": f'table env → port (or "{AUTO}"), or "{AUTO}"',
        }[self.kind]


SITE_KEYS: tuple[Key, ...] = (
    Key("name", "str", None, "Site name; defaults to the file name without `.toml`."),
    Key("envs", "str_list", ["dev", "staging", "prod"], "The environments every port table must cover."),
    Key("runtime_dir", "str", "/tmp/{site}-{user}-supervisord-{env}",
        "Sockets, pidfiles, rendered configs and logs; a reboot may wipe it. Each instance gets "
        "`<runtime_dir>/<instance>/` unless the value contains `{instance}`."),
    Key("state_dir", "str", "~/.local/state/siteboot/{site}-{env}",
        "Keys, locks, operator stops and runner records of the instance's user; survives reboots."),
    Key("shared_dir", "str", None,
        "A directory both accounts can reach; only needed for group grants."),
    Key("venv_dir", "str", "~/.local/share/siteboot/{site}-{env}/venvs",
        "Where application virtualenvs (`[venvs.*]`) are built, per user."),
)

INSTANCE_KEYS: tuple[Key, ...] = (
    Key("user", "str", None, "Account that runs this supervisord; omitted: the invoking user."),
    Key("port", "port_table", None,
        "Its `inet_http_server` port on 127.0.0.1, per env; `\"auto\"`: siteboot picks one (see "
        "[Auto ports](#auto-ports)), not with `group`.", required=True),
    Key("group", "str", None,
        "Grant: members of this group may control the instance with the key the owner "
        "publishes in `shared_dir`."),
)

PROGRAM_KEYS: tuple[Key, ...] = (
    Key("instance", "str", None, "The instance (supervisord) that runs it.", required=True),
    Key("command", "str", None,
        "Command line; placeholders: " + " ".join("{" + p + "}" for p in PLACEHOLDERS) + ".",
        required=True),
    Key("port", "port_table", None,
        "Its port per env, available as `{port}`; `\"auto\"`: siteboot picks one (see "
        "[Auto ports](#auto-ports))."),
    Key("environment", "str_table", {}, "Environment variables; placeholders allowed."),
    Key("venv", "str", None, "Name of a `[venvs.*]` table, available as `{venv}`."),
    Key("directory", "str", None, "Working directory; placeholders allowed."),
    Key("numprocs", "int", 1, "Number of copies (not with `port`).", minimum=1, supervisor="numprocs"),
    Key("autostart", "bool", True, "Start with the instance; also: must be RUNNING for `status` to be OK.",
        supervisor="autostart"),
    Key("autorestart", "choice", "unexpected", "Restart policy after exit.",
        choices=("true", "false", "unexpected"), supervisor="autorestart"),
    Key("startsecs", "int", 3, "Seconds it must stay up to count as started.", minimum=0,
        supervisor="startsecs"),
    Key("startretries", "int", 10, "Attempts before FATAL.", minimum=0, supervisor="startretries"),
    Key("stopsignal", "choice", "TERM", "Signal sent to stop it.", choices=_SIGNALS,
        supervisor="stopsignal"),
    Key("stopwaitsecs", "int", 10, "Seconds to wait after the stop signal before SIGKILL.",
        minimum=0, supervisor="stopwaitsecs"),
    Key("priority", "int", 999, "Lower starts first and stops last.", minimum=0, supervisor="priority"),
    Key("redirect_stderr", "bool", False, "Send stderr into the stdout log.",
        supervisor="redirect_stderr"),
    Key("log_maxbytes", "str", "10MB", "Rotate each log (stdout, stderr) at this size."),
    Key("log_backups", "int", 5, "Rotated logs kept per stream.", minimum=0),
    Key("crash_loop_restarts", "int", 3,
        "`status` warns (exit 1) when the program was restarted after exiting more often than "
        "this within `crash_loop_window`.", minimum=0),
    Key("crash_loop_window", "int", 300,
        "Seconds over which `status` counts restarts (read from supervisord's log); 0 turns the "
        "count off.", minimum=0),
)

RUNNER_MODES = ("supervised", "detached")
RUNNER_PROGRAM = "gitlab-runner"  # the program a supervised runner becomes in its instance
RUNNER_PLACEHOLDERS = ("site", "env", "user", "state_dir")

RUNNER_KEYS: tuple[Key, ...] = (
    Key("instance", "str", None,
        "The instance whose account runs the runner; `supervised`: its supervisord runs it as "
        f"program `{RUNNER_PROGRAM}`.", required=True),
    Key("mode", "choice", "supervised",
        "`supervised`: a program of that instance (`stopsignal = QUIT`); `detached`: a process "
        "of its own that `siteboot runner revive` starts once (JAWS's `nohup`).",
        choices=RUNNER_MODES),
    Key("executable", "str", "gitlab-runner",
        "The gitlab-runner binary: an absolute path or a name looked up on PATH (cron's PATH is "
        "short: prefer a path). In the three paths: `~` is the owner's home; placeholders "
        + " ".join("{" + p + "}" for p in RUNNER_PLACEHOLDERS) + "."),
    Key("config", "str", "~/.gitlab-runner/config.toml",
        "Its `config.toml`, passed as `--config`; the default is gitlab-runner's own for a "
        "non-root account."),
    Key("working_directory", "str", None,
        "Passed as `--working-directory` and used as its current directory (it must exist); "
        "omitted: the owner's home."),
    Key("drain_timeout", "int", 7200,
        "Seconds a drain (SIGQUIT: finish running jobs, take no new ones) waits for them: "
        "`runner drain` then reports; supervised, it is the `stopwaitsecs` after which "
        "supervisord kills it. At least your longest job timeout; 7200 is the `TimeoutStopSec` "
        "GitLab documents for systemd.", minimum=0),
)

VENV_KEYS: tuple[Key, ...] = (
    Key("requirements", "str_list", [], "pip requirement specifiers.", required=True),
    Key("python", "str", None, "Interpreter for the venv; omitted: the one running siteboot."),
)

# Program keys with fields of their own; the rest are ``Program.options``.
_STRUCTURAL = ("instance", "command", "port", "environment", "venv")

TABLES: tuple[tuple[str, tuple[Key, ...]], ...] = (
    ("[site]", SITE_KEYS),
    ("[instances.NAME]", INSTANCE_KEYS),
    ("[programs.NAME]", PROGRAM_KEYS),
    ("[venvs.NAME]", VENV_KEYS),
    ("[runner]", RUNNER_KEYS),
)


@dataclass(frozen=True)
class Instance:
    name: str
    user: str | None
    port: dict[str, int | None]  # None: "auto", allocated per user (``plan`` reads the record)
    group: str | None


@dataclass(frozen=True)
class Program:
    name: str
    instance: str
    command: str
    port: dict[str, int | None] | None  # None per env: "auto"
    environment: dict[str, str]
    venv: str | None
    options: dict[str, Any]  # every other key, defaults filled in


@dataclass(frozen=True)
class VenvSpec:
    name: str
    requirements: list[str]
    python: str | None


@dataclass(frozen=True)
class RunnerSpec:
    """``[runner]``: a gitlab-runner of one instance's account (paths still hold placeholders)."""

    instance: str
    mode: str
    executable: str
    config: str
    working_directory: str | None
    drain_timeout: int


@dataclass(frozen=True)
class Site:
    name: str
    path: Path
    envs: list[str]
    runtime_dir: str
    state_dir: str
    shared_dir: str | None
    venv_dir: str
    instances: dict[str, Instance]
    programs: dict[str, Program]
    venvs: dict[str, VenvSpec] = field(default_factory=dict)
    runner: RunnerSpec | None = None

    def port_users(self) -> list[tuple[str, str, int]]:
        """Every fixed port of the site as (owner label, env, port): programs and supervisords
        (``"auto"`` ones are allocated per user: ``ports.allocated_users``)."""
        rows: list[tuple[str, str, int]] = []
        for program in self.programs.values():
            for env, port in (program.port or {}).items():
                if port is not None:
                    rows.append((f"program {program.name}", env, port))
        for instance in self.instances.values():
            for env, port in instance.port.items():
                if port is not None:
                    rows.append((f"supervisord-{instance.name}", env, port))
        return rows

    def auto_ports(self) -> list[tuple[str, str, str]]:
        """Every ``"auto"`` port as (instance, record key, env): what ``ports.allocate`` keeps
        in the port record of the instance's user."""
        rows = [(program.instance, program_port_key(program.name), env)
                for program in self.programs.values()
                for env, port in (program.port or {}).items() if port is None]
        rows += [(inst.name, instance_port_key(inst.name), env)
                 for inst in self.instances.values() for env, port in inst.port.items()
                 if port is None]
        return rows


def program_port_key(program: str) -> str:
    """How a program's auto port is named in a port record (and in messages)."""
    return f"program {program}"


def instance_port_key(instance: str) -> str:
    """How an instance's auto port is named in a port record (its row in ``siteboot ports``)."""
    return f"supervisord-{instance}"


@dataclass(frozen=True)
class Problem:
    level: str  # "error" or "warning"
    where: str
    message: str

    def __str__(self) -> str:
        prefix = "" if self.level == "error" else "warning: "
        return f"{self.where}: {prefix}{self.message}"


# --------------------------------------------------------------------------------------------
# Reading


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error names file, line and column."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.9/3.10 only
        import tomli as tomllib
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SiteFileError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteFileError(str(path), [f"cannot read: {exc}"]) from None
    try:
        data: dict[str, Any] = tomllib.loads(text)
        return data
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        found = match or re.search(r"\(at end of document\)", message)
        if found:
            if match:
                line, column = match.group(1), match.group(2)
            else:  # tomllib names no position here: the end is the last line's end
                lines = text.split("\n")
                line, column = str(len(lines)), str(len(lines[-1]) + 1)
            reason = message[: found.start()].strip()
            where = f"{path}:{line}:{column}"
            raise SiteFileError(str(path), [f"line {line}, column {column}: "
                                            f"TOML syntax error: {reason} ({where})"]) from None
        raise SiteFileError(str(path), [f"TOML syntax error: {message}"]) from None


class _Locator:
    """Finds the line of a table or key in the source, so problems point at it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lines: list[str] | None = None

    @property
    def lines(self) -> list[str]:
        # Read only when a problem needs a line number: a valid site is read once.
        if self._lines is None:
            try:
                self._lines = self.path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError):
                self._lines = []
        return self._lines

    def where(self, table: str, key: str | None = None) -> str:
        header = re.compile(r"^\s*\[\s*" + re.escape(table).replace(r"\.", r"\s*\.\s*") + r"\s*\]")
        start = next((i for i, line in enumerate(self.lines) if header.match(line)), None)
        label = f"[{table}]" + (f" {key}" if key else "")
        if start is None:
            return f"{self.path}: {label}"
        line_no = start
        if key:
            key_re = re.compile(r"^\s*" + re.escape(key.split(".")[0]) + r"\s*=")
            for i in range(start + 1, len(self.lines)):
                if self.lines[i].lstrip().startswith("["):
                    break
                if key_re.match(self.lines[i]):
                    line_no = i
                    break
        return f"{self.path}:{line_no + 1}: {label}"


class _Validator:
    def __init__(self, path: Path) -> None:
        self.locator = _Locator(path)
        self.problems: list[Problem] = []

    def error(self, table: str, key: str | None, message: str) -> None:
        self.problems.append(Problem("error", self.locator.where(table, key), message))

    def table(self, table: str, raw: Any, keys: Sequence[Key], envs: Sequence[str]) -> dict[str, Any]:
        """Check one table against its declarations; return values with defaults filled in."""
        if not isinstance(raw, dict):
            self.error(table, None, f"must be a table, not {type(raw).__name__}")
            raw = {}
        known = {k.name: k for k in keys}
        for name in raw:
            if name not in known:
                self.error(table, name, f"unknown key '{name}'{did_you_mean(name, known)}")
        values: dict[str, Any] = {}
        for key in keys:
            if key.name not in raw:
                if key.required:
                    self.error(table, None, f"missing required key '{key.name}'")
                values[key.name] = key.default
                continue
            values[key.name] = self.value(table, key, raw[key.name], envs)
        return values

    def value(self, table: str, key: Key, value: Any, envs: Sequence[str]) -> Any:
        checker: Callable[[str, Key, Any, Sequence[str]], Any] = getattr(self, f"_{key.kind}")
        return checker(table, key, value, envs)

    def _str(self, table: str, key: Key, value: Any, envs: Sequence[str]) -> Any:
        if not isinstance(value, str):
            self.error(table, key.name, f"'{key.name}' must be a string, not {_tname(value)}")
            return key.default
        return value

    def _int(self, table: str, key: Key, value: Any, envs: Sequence[str]) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(table, key.name, f"'{key.name}' must be an integer, not {_tname(value)}")
            return key.default
        if key.minimum is not None and value < key.minimum:
            self.error(table, key.name, f"'{key.name}' must be at least {key.minimum}, not {value}")
        return value

    def _bool(self, table: str, key: Key, value: Any, envs: Sequence[str]) -> Any:
        if not isinstance(value, bool):
            self.error(table, key.name, f"'{key.name}' must be true or false, not {_tname(value)}")
            return key.default
        return value

    def _choice(self, table: str, key: Key, value: Any, envs: Sequence[str]) -> Any:
        if isinstance(value, bool) and "true" in key.choices:
            value = "true" if value else "false"
        if value not in key.choices:
            allowed = ", ".join(key.choices)
            self.error(table, key.name, f"'{key.name}' must be one of {allowed}, not {value!r}")
            return key.default
        return value

    def _str_list(self, table: str, key: Key, value: Any, envs: Sequence[str]) -> Any:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(table, key.name, f"'{key.name}' must be a list of strings")
            return list(key.default)
        return value

    def _str_table(self, table: str, key: Key, value: Any, envs: Sequence[str]) -> Any:
        if not isinstance(value, dict):
            self.error(table, key.name, f"'{key.name}' must be a table of strings")
            return {}
        result: dict[str, str] = {}
        for name, item in value.items():
            if not _ENV_NAME_RE.match(name):
                self.error(table, key.name, f"'{key.name}.{name}' is not a valid variable name")
            elif not isinstance(item, str):
                self.error(table, key.name,
                           f"'{key.name}.{name}' must be a string, not {_tname(item)} "
                           f"(quote it: \"{item}\")")
            else:
                result[name] = item
        return result

    def _port_table(self, table: str, key: Key, value: Any, envs: Sequence[str]) -> Any:
        if value == AUTO:
            return {env: None for env in envs}
        if not isinstance(value, dict):
            self.error(table, key.name,
                       f"'{key.name}' must be a table of env = port, e.g. "
                       f"{{ {', '.join(f'{e} = {PORT_MIN + i}' for i, e in enumerate(envs))} }}, "
                       f"or \"{AUTO}\", not {_tname(value)} {value!r}")
            return None
        ports: dict[str, int | None] = {}
        for env in value:
            if env not in envs:
                self.error(table, key.name, f"'{key.name}.{env}': '{env}' is not an env of this "
                           f"site{did_you_mean(env, envs)}")
        for env in envs:
            if env not in value:
                self.error(table, key.name, f"'{key.name}' has no port for env '{env}'")
                continue
            port = value[env]
            if port == AUTO:
                ports[env] = None
            elif not isinstance(port, int) or isinstance(port, bool):
                self.error(table, key.name,
                           f"'{key.name}.{env}' must be an integer port, not {_tname(port)} "
                           f"{port!r} (or \"{AUTO}\": siteboot picks one)")
            elif not PORT_MIN <= port <= PORT_MAX:
                self.error(table, key.name,
                           f"'{key.name}.{env}' = {port} is outside {PORT_MIN}-{PORT_MAX}")
            else:
                ports[env] = port
        return ports


def _tname(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "list",
            dict: "table"}.get(type(value), type(value).__name__)


def parse_site(path: Path) -> tuple[Site | None, list[Problem]]:
    """Read and validate a site file. Returns the model (None if unusable) and every problem."""
    data = read_toml(path)
    v = _Validator(path)
    known_top = ("site", "instances", "programs", "venvs", "runner")
    for top in data:
        if top not in known_top:
            hint = did_you_mean(top, known_top, "'[{}]'")
            v.problems.append(Problem("error", f"{path}: [{top}]", f"unknown table '{top}'{hint}"))

    site_raw = data.get("site", {})
    envs = site_raw.get("envs", SITE_KEYS[1].default) if isinstance(site_raw, dict) else []
    if not isinstance(envs, list) or not envs or not all(isinstance(e, str) for e in envs):
        envs = list(SITE_KEYS[1].default)
    site_values = v.table("site", site_raw, SITE_KEYS, envs)
    site_name = site_values["name"] or path.stem
    _check_name(v, "site", "name", site_name)
    if len(set(site_values["envs"])) != len(site_values["envs"]) or not site_values["envs"]:
        v.error("site", "envs", "'envs' must list at least one env, each once")
    for env in site_values["envs"]:
        _check_name(v, "site", "envs", env)

    instances: dict[str, Instance] = {}
    for name, raw in _subtables(v, data, "instances").items():
        table = f"instances.{name}"
        _check_name(v, table, None, name)
        values = v.table(table, raw, INSTANCE_KEYS, envs)
        instances[name] = Instance(name, values["user"], values["port"] or {}, values["group"])
    if not instances:
        v.problems.append(Problem("error", f"{path}", "the site declares no [instances.NAME]"))

    venvs: dict[str, VenvSpec] = {}
    for name, raw in _subtables(v, data, "venvs").items():
        table = f"venvs.{name}"
        _check_name(v, table, None, name)
        values = v.table(table, raw, VENV_KEYS, envs)
        venvs[name] = VenvSpec(name, values["requirements"], values["python"])

    programs: dict[str, Program] = {}
    for name, raw in _subtables(v, data, "programs").items():
        table = f"programs.{name}"
        _check_name(v, table, None, name)
        values = v.table(table, raw, PROGRAM_KEYS, envs)
        program = Program(
            name=name,
            instance=values["instance"] or "",
            command=values["command"] or "",
            port=values["port"],
            environment=values["environment"],
            venv=values["venv"],
            options={k.name: values[k.name] for k in PROGRAM_KEYS if k.name not in _STRUCTURAL},
        )
        _check_program(v, table, program, instances, venvs)
        programs[name] = program

    site = Site(
        name=site_name,
        path=path,
        envs=site_values["envs"],
        runtime_dir=site_values["runtime_dir"],
        state_dir=site_values["state_dir"],
        shared_dir=site_values["shared_dir"],
        venv_dir=site_values["venv_dir"],
        instances=instances,
        programs=programs,
        venvs=venvs,
        runner=_runner(v, data, envs, instances, programs),
    )
    _check_paths(v, site)
    for inst in instances.values():
        if inst.group and not site.shared_dir:
            v.error(f"instances.{inst.name}", "group",
                    "a group grant needs [site] shared_dir, where the key is published")
        auto = [env for env, port in inst.port.items() if port is None]
        if inst.group and auto:
            v.error(f"instances.{inst.name}", "port",
                    f"a granted instance needs a fixed port (members of {inst.group} reach it on "
                    f"127.0.0.1:<port>, and only its owner knows an auto one): 'port' is "
                    f"\"{AUTO}\" in {', '.join(auto)}")
    v.problems.extend(port_clashes([site]))
    return site, v.problems


def _subtables(v: _Validator, data: Mapping[str, Any], top: str) -> dict[str, Any]:
    raw = data.get(top, {})
    if not isinstance(raw, dict):
        v.problems.append(Problem("error", f"{v.locator.path}: [{top}]", f"'{top}' must be a table"))
        return {}
    return raw


def _check_name(v: _Validator, table: str, key: str | None, name: str) -> None:
    if not _NAME_RE.match(name):
        v.error(table, key, f"'{name}' is not a valid name (letters, digits, '_', '-', '.')")


def _check_program(v: _Validator, table: str, program: Program, instances: Mapping[str, Instance],
                   venvs: Mapping[str, VenvSpec]) -> None:
    if program.instance and program.instance not in instances:
        v.error(table, "instance", f"instance '{program.instance}' is not declared"
                f"{did_you_mean(program.instance, instances)}")
    if program.venv and program.venv not in venvs:
        v.error(table, "venv", f"venv '{program.venv}' is not declared in [venvs]")
    if program.port and program.options["numprocs"] > 1:
        v.error(table, "numprocs", "a program with a port cannot have numprocs > 1 "
                "(the copies would share the port)")
    maxbytes = program.options.get("log_maxbytes")
    if isinstance(maxbytes, str) and not _BYTE_SIZE_RE.fullmatch(maxbytes):
        v.error(table, "log_maxbytes", f"'log_maxbytes' must be a size like \"10MB\" "
                f"(a number, optionally with KB, MB or GB), not {maxbytes!r}")
    texts = {"command": program.command, "directory": program.options.get("directory") or ""}
    texts.update({f"environment.{k}": val for k, val in program.environment.items()})
    for key, text in texts.items():
        try:
            fields = placeholder_fields(text)
        except ValueError as exc:
            v.error(table, key, f"'{key}': {exc} (write a literal brace as '{{{{' or '}}}}')")
            continue
        for name in fields:
            if name not in PLACEHOLDERS:
                hint = did_you_mean(name, PLACEHOLDERS, "'{{{}}}'")  # -> '{port}'
                v.error(table, key, f"'{key}' uses undefined placeholder {{{name}}}{hint}")
            elif name == "port" and not program.port:
                v.error(table, key, f"'{key}' uses {{port}} but the program has no 'port' table")
            elif name == "venv" and not program.venv:
                v.error(table, key, f"'{key}' uses {{venv}} but the program names no 'venv'")


def default_program_options() -> dict[str, Any]:
    """``Program.options`` of a program that sets none of them."""
    return {k.name: k.default for k in PROGRAM_KEYS if k.name not in _STRUCTURAL}


def _runner(v: _Validator, data: Mapping[str, Any], envs: Sequence[str],
            instances: Mapping[str, Instance], programs: Mapping[str, Program]) -> RunnerSpec | None:
    if "runner" not in data:
        return None
    values = v.table("runner", data["runner"], RUNNER_KEYS, envs)
    runner = RunnerSpec(values["instance"] or "", values["mode"], values["executable"],
                        values["config"], values["working_directory"], values["drain_timeout"])
    if runner.instance and runner.instance not in instances:
        v.error("runner", "instance", f"instance '{runner.instance}' is not declared"
                f"{did_you_mean(runner.instance, instances)}")
    if runner.mode == "supervised" and RUNNER_PROGRAM in programs:
        v.error("runner", "mode", f"a supervised runner is the program '{RUNNER_PROGRAM}', and "
                f"[programs.{RUNNER_PROGRAM}] exists already: rename that program, or use "
                "mode = \"detached\"")
    for key in ("executable", "config", "working_directory"):
        if values[key] is not None:
            _check_path(v, "runner", key, values[key], RUNNER_PLACEHOLDERS,
                        name_ok=key == "executable")
    return runner


def _check_paths(v: _Validator, site: Site) -> None:
    for key in ("runtime_dir", "state_dir", "shared_dir", "venv_dir"):
        value = getattr(site, key)
        if value is not None:
            extra = ("instance",) if key == "runtime_dir" else ()
            _check_path(v, "site", key, value, ("site", "env", "user", *extra))


def _check_path(v: _Validator, table: str, key: str, value: str, allowed: Sequence[str],
                name_ok: bool = False) -> None:
    """Only ``allowed`` placeholders, and absolute (``~``, or ``{state_dir}``, which is); with
    ``name_ok`` also a bare name (a program looked up on PATH)."""
    try:
        fields = placeholder_fields(value)
    except ValueError as exc:
        v.error(table, key, f"'{key}': {exc}")
        return
    for name in sorted(fields - set(allowed)):
        v.error(table, key, f"'{key}' uses undefined placeholder {{{name}}}; "
                f"allowed: {', '.join('{' + a + '}' for a in sorted(allowed))}")
    absolute = ("/", "~", "{state_dir}") if "state_dir" in allowed else ("/", "~")
    if not (value.startswith(absolute) or (name_ok and "/" not in value)):
        what = "an absolute path (or start with ~)" + (", or a name on PATH" if name_ok else "")
        v.error(table, key, f"'{key}' must be {what}, not {value!r}")


def placeholder_fields(text: str) -> set[str]:
    """Names used as ``{name}`` in ``text``; raises ValueError on unbalanced braces."""
    import string

    names = set()
    for _literal, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"'{{{name}}}' is not a placeholder")
        if spec or conversion:
            raise ValueError(f"unsupported placeholder {{{name}{'!' + conversion if conversion else ''}"
                             f"{':' + spec if spec else ''}}}")
        names.add(name)
    return names


def port_clashes(sites: Sequence[Site]) -> list[Problem]:
    """The same port used twice anywhere (across envs, programs, instances and sites)."""
    seen: dict[int, tuple[Site, str, str]] = {}
    problems: list[Problem] = []
    for site in sites:
        locator = _Locator(site.path)
        for owner, env, port in site.port_users():
            label = f"{owner} ({env})" if len(sites) == 1 else f"{site.name}: {owner} ({env})"
            if port in seen:
                first_site, first_owner, first_env = seen[port]
                first = (f"{first_owner} ({first_env})" if len(sites) == 1
                         else f"{first_site.name}: {first_owner} ({first_env})")
                table = (f"programs.{owner.split(' ', 1)[1]}" if owner.startswith("program ")
                         else f"instances.{owner.split('-', 1)[1]}")
                problems.append(Problem("error", locator.where(table, "port"),
                                        f"port {port} is used by both {first} and {label}"))
            else:
                seen[port] = (site, owner, env)
    return problems


def load_site(path: Path) -> Site:
    """The validated site, or ``SiteFileError`` listing every error."""
    site, problems = parse_site(path)
    errors = [str(p) for p in problems if p.level == "error"]
    if errors or site is None:
        raise SiteFileError(str(path), errors)
    return site


def reference_markdown() -> str:
    """The site-file reference, generated from the key declarations (kept in the README)."""
    out: list[str] = []
    for title, keys in TABLES:
        out.append(f"#### `{title}`\n")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for key in keys:
            default = "required" if key.required else ("—" if key.default is None else
                                                        f"`{_toml_repr(key.default)}`")
            out.append(f"| `{key.name}` | {key.type_name} | {default} | {key.doc} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_repr(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)
