"""Site files: TOML in, a validated ``Site`` model out.

Every key of every table is declared once below (``Key``: type, default, description). The same
declarations validate site files, render the README's reference table (``reference_markdown``)
and decide which program keys pass through to supervisord.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from siteboot.errors import SiteFileError, did_you_mean

PORT_MIN = 1024
PORT_MAX = 65535
AUTO = "auto"  # a port siteboot allocates (``ports.allocate``); None in the model
PLACEHOLDERS = ("port", "env", "site", "instance", "runtime_dir", "state_dir", "venv", "python")
# ``{kind:NAME}``: a var, another program's port, a secret, a managed file's or dir's path
NAMED_PLACEHOLDERS = ("var", "port", "secret", "file", "dir")
DEFAULT_ENV_KEY = "default"  # in a per-env table: the value of every env it does not name
# What the texts of each table may use (a program's also depend on its port and venv).
PROGRAM_USES = (*PLACEHOLDERS, "var:", "port:", "file:", "dir:")
VAR_USES = ("env", "site", "var:", "port:", "secret:")
FILE_PATH_USES = ("env", "site", "instance", "user", "state_dir", "runtime_dir", "var:", "port:",
                  "dir:")
DIR_PATH_USES = ("env", "site", "instance", "user", "state_dir", "var:")
_SECRETS_GO = "secrets go only into environment values, vars and files"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
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
    per_env: bool = False  # a string (or each string of a table) may be given per env

    @property
    def type_name(self) -> str:
        if self.kind == "choice":
            return " | ".join(f'"{c}"' for c in self.choices)
        if self.per_env:
            return {"str": "string, or per env", "str_table": "table of strings, each may be "
                    "per env"}[self.kind]
        return {
            "str": "string",
            "int": "integer",
            "bool": "boolean",
            "str_list": "list of strings",
            "str_table": "table of strings",
            "port_table": f'table env → port (or "{AUTO}"), or "{AUTO}"',
            "probe": "table: `tcp`, `http` (+ `status`) or `command`",
            "restart": "table: `backoff_max`",
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
    Key("preamble", "str_list", [],
        "Shell lines (e.g. `module load python/3.11`) run in a login shell (`bash -l`) before "
        "each program starts, before a detached gitlab-runner, and before `revive` from cron; "
        "a line that fails keeps the program from starting."),
    Key("preamble_file", "str", None,
        "A shell file sourced (`.`) in that login shell instead of `preamble` lines; relative "
        "to the site file's folder. Read at each start: an edit applies at the next restart."),
    Key("keep_releases", "int", 5,
        "Releases `siteboot deploy` keeps in the deployer's state dir (the current and the "
        "previous one are never deleted).", minimum=2),
)

GRANTS = ("control", "deploy")  # what an instance's `group` grants; deploy includes control

INSTANCE_KEYS: tuple[Key, ...] = (
    Key("user", "str", None, "Account that runs this supervisord; omitted: the invoking user."),
    Key("port", "port_table", None,
        "Its `inet_http_server` port on 127.0.0.1, per env; `\"auto\"`: siteboot picks one (see "
        "[Auto ports](#auto-ports)), not with `group`.", required=True),
    Key("group", "str", None,
        "Grant: members of this group may control the instance with the key the owner "
        "publishes in `shared_dir`."),
    Key("grant", "choice", "control",
        "What `group` grants: `control` (state, start/stop, logs) or `deploy` (control, and "
        "members' `siteboot deploy`/`rollback` change its programs through the owner's deploy "
        "agent: members run commands as the owner). Only with `group`.",
        choices=GRANTS),
    Key("host", "str", None,
        "The host it runs on (`jaws.lbl.gov`; a short name matches the full one); omitted: any. "
        "Commands on other hosts list it as `on <host>`; this host is `SITEBOOT_HOST`, else "
        "the kernel's host name."),
)

PROGRAM_KEYS: tuple[Key, ...] = (
    Key("instance", "str", None, "The instance (supervisord) that runs it.", required=True),
    Key("command", "str", None,
        "Command line; placeholders: " + " ".join("{" + p + "}" for p in PLACEHOLDERS)
        + " {var:NAME} {port:PROGRAM} {file:NAME} {dir:NAME} (shell-quoted).",
        required=True, per_env=True),
    Key("port", "port_table", None,
        "Its port per env, available as `{port}`; `\"auto\"`: siteboot picks one (see "
        "[Auto ports](#auto-ports))."),
    Key("environment", "str_table", {},
        "Environment variables; placeholders as in `command`, and `{secret:NAME}`.", per_env=True),
    Key("venv", "str", None, "Name of a `[venvs.*]` table, available as `{venv}`."),
    Key("directory", "str", None, "Working directory; placeholders as in `command`.",
        per_env=True),
    Key("files", "str_list", [],
        "Names of `[files.*]` of its instance that it reads: written before it starts; `up` "
        "restarts it when one of them changed."),
    Key("numprocs", "int", 1, "Number of copies (not with `port`).", minimum=1, supervisor="numprocs"),
    Key("autostart", "bool", True,
        "Should run: started with the instance (with `depends_on`: once those are ready) and "
        "must be RUNNING for `status` to be OK.", supervisor="autostart"),
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
    Key("depends_on", "str_list", [],
        "Programs (of any instance of the site) that must be ready before this one starts: "
        "`up`, `init` and `revive` start it only then (supervisord does not start it by itself), "
        "and stop it before them."),
    Key("ready", "probe", None,
        "When it is ready: `{ tcp = \"{port}\" }` (a connection is accepted), `{ http = "
        "\"http://127.0.0.1:{port}/health\", status = 200 }` or `{ command = \"...\" }` (exit 0); "
        "placeholders as in `command`. Checked every 5 s while it runs (`status` shows it). "
        "Omitted: ready once RUNNING."),
    Key("ready_timeout", "int", 60,
        "Seconds to wait for it to become ready before what depends on it is given up.",
        minimum=1),
    Key("restart", "restart", None,
        "Self-healing, `{ backoff_max = 300 }`: after it ends FATAL (or exits where supervisord "
        "does not restart it), start it again, forever, 1 s later, doubling up to `backoff_max` "
        "seconds; back to 1 s once it has run for 60 s. Omitted: FATAL is final."),
)
HEALER_PROGRAM = "siteboot-healer"  # the event listener rendered into a supervisord that heals
# the program rendered into an instance that grants deploy: applies its members' requests
DEPLOY_AGENT_PROGRAM = "siteboot-deploy-agent"
RESERVED_PROGRAMS = {HEALER_PROGRAM: "siteboot's event listener",
                     DEPLOY_AGENT_PROGRAM: "siteboot's deploy agent"}
DEFAULT_BACKOFF_MAX = 300

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

VAR_KEYS: tuple[Key, ...] = (
    Key("NAME", "str", None,
        "A named value, used as `{var:NAME}` in programs, files, dirs and other vars; "
        "placeholders {env} {site} {var:NAME} {port:PROGRAM} {secret:NAME}.", per_env=True),
)

FILE_KEYS: tuple[Key, ...] = (
    Key("template", "str", None,
        "Jinja2 template under the site root's `templates/` (e.g. "
        "`\"templates/app.conf.j2\"`), rendered in the sandbox; it sees `env`, `site`, "
        "`instance`, `user`, `state_dir`, `runtime_dir`, `vars`, `ports`/`port(NAME)`, `files`, "
        "`dirs`, `venvs` and `secret(NAME)`.", required=True),
    Key("path", "str", None,
        "Where it is written (absolute or `~`); placeholders {env} {site} {instance} {user} "
        "{state_dir} {runtime_dir} {var:NAME} {port:PROGRAM} {dir:NAME}.",
        required=True, per_env=True),
    Key("mode", "str", "0600", "Its permissions, an octal string; never writable by others."),
    Key("instance", "str", None,
        "Whose account writes it (atomically, at `up`, `init` and `render`, before the "
        "instance's programs start).", required=True),
)

DIR_KEYS: tuple[Key, ...] = (
    Key("path", "str", None,
        "The directory (absolute or `~`); placeholders {env} {site} {instance} {user} "
        "{state_dir} {var:NAME}.", required=True, per_env=True),
    Key("mode", "str", "0700",
        "Its one mode, an octal string such as `\"2770\"` (setgid and sticky bits allowed)."),
    Key("group", "str", None, "Its group (the instance's user must be a member).",
        per_env=True),
    Key("instance", "str", None,
        "Whose account creates it, or corrects its mode and group, before the instance's "
        "programs start; never deleted (not even by `down --purge`).", required=True),
)

VENV_KEYS: tuple[Key, ...] = (
    Key("requirements", "str_list", [],
        "pip requirement specifiers, one per item; also local paths (`\"./jaws-site\"`, a wheel "
        "file) and wheel folders (`\"--find-links ./dist\"`) inside the site root (the folder "
        "holding `sites/`; for a site file elsewhere, its folder), whose content is part of the "
        "venv's hash: new code is a new build, and the programs using it restart.",
        required=True),
    Key("python", "str", None, "Interpreter for the venv; omitted: the one running siteboot."),
)

# Program keys with fields of their own; the rest are ``Program.options``.
_STRUCTURAL = ("instance", "command", "port", "environment", "venv", "files")

TABLES: tuple[tuple[str, tuple[Key, ...]], ...] = (
    ("[site]", SITE_KEYS),
    ("[instances.NAME]", INSTANCE_KEYS),
    ("[programs.NAME]", PROGRAM_KEYS),
    ("[vars]", VAR_KEYS),
    ("[files.NAME]", FILE_KEYS),
    ("[dirs.NAME]", DIR_KEYS),
    ("[venvs.NAME]", VENV_KEYS),
    ("[runner]", RUNNER_KEYS),
)


@dataclass(frozen=True)
class PerEnv:
    """A string given per env (``{ dev = "DEBUG", prod = "INFO" }``), every env filled in
    (``default`` stands for the envs the table does not name). ``plan`` picks one per env."""

    by_env: dict[str, str]

    def get(self, env: str) -> str:
        return self.by_env[env]


Text = Union[str, PerEnv]


def text_for(value: Text, env: str) -> str:
    """``value`` as it reads in ``env``."""
    return value.get(env) if isinstance(value, PerEnv) else value


def variants(value: Text) -> list[str]:
    """The distinct texts ``value`` takes across envs (validation checks each)."""
    if isinstance(value, PerEnv):
        return list(dict.fromkeys(value.by_env.values()))
    return [value]


@dataclass(frozen=True)
class Instance:
    """An ``[instances.NAME]``: one supervisord, its account and its port per env."""

    name: str
    user: str | None
    port: dict[str, int | None]  # None: "auto", allocated per user (``plan`` reads the record)
    group: str | None
    host: str | None = None
    grant: str = "control"  # what ``group`` grants (``GRANTS``)

    @property
    def grants_deploy(self) -> bool:
        return bool(self.group) and self.grant == "deploy"


@dataclass(frozen=True)
class Program:
    """A ``[programs.NAME]`` as written (texts may still be per env and hold placeholders)."""

    name: str
    instance: str
    command: Text
    port: dict[str, int | None] | None  # None per env: "auto"
    environment: dict[str, Text]
    venv: str | None
    options: dict[str, Any]  # every other key, defaults filled in (``directory``: a Text)
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FileSpec:
    """``[files.NAME]``: a file rendered from a template by its instance's user."""

    name: str
    template: str  # relative to the site root, under templates/
    path: Text
    mode: int
    instance: str


@dataclass(frozen=True)
class DirSpec:
    """``[dirs.NAME]``: a directory its instance's user creates, or corrects, before starting."""

    name: str
    path: Text
    mode: int
    group: Text | None
    instance: str


@dataclass(frozen=True)
class VenvSpec:
    """A ``[venvs.NAME]``: an application virtualenv and its requirements."""

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
    """A validated site file."""

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
    preamble: list[str] = field(default_factory=list)  # shell lines for the login shell
    preamble_file: str | None = None  # or a file it sources (as written: resolved by the plan)
    vars: dict[str, Text] = field(default_factory=dict)
    files: dict[str, FileSpec] = field(default_factory=dict)
    dirs: dict[str, DirSpec] = field(default_factory=dict)
    keep_releases: int = 5

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
    """Something wrong (``error``) or doubtful (``warning``) in a site file, and where."""

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


def locate(path: Path, table: str, key: str | None = None) -> str:
    """``file:line: [table] key`` of a table or key of the site file at ``path``."""
    return _Locator(path).where(table, key)


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
        if key.per_env and isinstance(value, dict):
            return self.per_env(table, key.name, value, envs)
        if not isinstance(value, str):
            also = " or a table of env = string" if key.per_env else ""
            self.error(table, key.name, f"'{key.name}' must be a string{also}, not {_tname(value)}")
            return key.default
        return value

    def per_env(self, table: str, label: str, value: dict[str, Any], envs: Sequence[str]) -> PerEnv:
        """``{ dev = "...", prod = "..." }``: only the site's envs (and ``default``), each env
        covered, every value a string."""
        for env, item in value.items():
            if env != DEFAULT_ENV_KEY and env not in envs:
                self.error(table, label, f"'{label}.{env}': '{env}' is not an env of this site"
                           f"{did_you_mean(env, [*envs, DEFAULT_ENV_KEY])}")
            elif not isinstance(item, str):
                self.error(table, label, f"'{label}.{env}' must be a string, not {_tname(item)}")
        texts = {env: item for env, item in value.items() if isinstance(item, str)}
        missing = [env for env in envs if env not in value]
        if missing and DEFAULT_ENV_KEY not in value:
            self.error(table, label, f"'{label}' has no value for env "
                       f"{', '.join(repr(e) for e in missing)} (add it, or a "
                       f"'{DEFAULT_ENV_KEY}' for the envs not named)")
        fallback = texts.get(DEFAULT_ENV_KEY, "")
        return PerEnv({env: texts.get(env, fallback) for env in envs})

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
        result: dict[str, Text] = {}
        for name, item in value.items():
            if not _ENV_NAME_RE.match(name):
                self.error(table, key.name, f"'{key.name}.{name}' is not a valid variable name")
            elif key.per_env and isinstance(item, dict):
                result[name] = self.per_env(table, f"{key.name}.{name}", item, envs)
            elif not isinstance(item, str):
                self.error(table, key.name,
                           f"'{key.name}.{name}' must be a string, not {_tname(item)} "
                           f"(quote it: \"{item}\")")
            else:
                result[name] = item
        return result

    def _probe(self, table: str, key: Key, value: Any, envs: Sequence[str]) -> Any:
        from siteboot.probes import validate

        probe, problems = validate(value)
        for problem in problems:
            self.error(table, key.name, f"'{key.name}': {problem}")
        return probe

    def _restart(self, table: str, key: Key, value: Any, envs: Sequence[str]) -> Any:
        if not isinstance(value, dict):
            self.error(table, key.name, f"'{key.name}' must be a table like {{ backoff_max = "
                       f"{DEFAULT_BACKOFF_MAX} }}, not {_tname(value)}")
            return None
        for name in value:
            if name != "backoff_max":
                self.error(table, key.name, f"unknown key '{key.name}.{name}'"
                           f"{did_you_mean(name, ['backoff_max'])}")
        backoff_max = value.get("backoff_max", DEFAULT_BACKOFF_MAX)
        if not isinstance(backoff_max, int) or isinstance(backoff_max, bool) or backoff_max < 1:
            self.error(table, key.name, f"'{key.name}.backoff_max' must be a number of seconds "
                       f"(at least 1), not {backoff_max!r}")
            return None
        return {"backoff_max": backoff_max}

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
    known_top = ("site", "instances", "programs", "vars", "files", "dirs", "venvs", "runner")
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
        if env == DEFAULT_ENV_KEY:
            v.error("site", "envs", f"'{DEFAULT_ENV_KEY}' cannot be an env: in a per-env value "
                    "it stands for the envs not named")

    instances: dict[str, Instance] = {}
    for name, raw in _subtables(v, data, "instances").items():
        table = f"instances.{name}"
        _check_name(v, table, None, name)
        values = v.table(table, raw, INSTANCE_KEYS, envs)
        _check_host(v, table, values["host"])
        instances[name] = Instance(name, values["user"], values["port"] or {}, values["group"],
                                   values["host"], values["grant"])
        if isinstance(raw, dict) and "grant" in raw and not values["group"]:
            v.error(table, "grant", "'grant' says what `group` grants: add group = \"...\" "
                    "(its members get the grant) or remove it")
    if not instances:
        v.problems.append(Problem("error", f"{path}", "the site declares no [instances.NAME]"))

    venvs: dict[str, VenvSpec] = {}
    for name, raw in _subtables(v, data, "venvs").items():
        table = f"venvs.{name}"
        _check_name(v, table, None, name)
        values = v.table(table, raw, VENV_KEYS, envs)
        _check_requirements(v, table, values["requirements"])
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
            files=values["files"],
        )
        _check_program(v, table, program, instances, venvs)
        programs[name] = program
    _check_dependencies(v, programs)

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
        preamble=site_values["preamble"],
        preamble_file=site_values["preamble_file"],
        vars=_vars(v, data, envs),
        files=_files(v, data, envs, instances),
        dirs=_dirs(v, data, envs, instances),
        keep_releases=site_values["keep_releases"],
    )
    _check_paths(v, site)
    _check_texts(v, site)
    _check_preamble(v, site)
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


def _vars(v: _Validator, data: Mapping[str, Any], envs: Sequence[str]) -> dict[str, Text]:
    found: dict[str, Text] = {}
    for name, raw in _subtables(v, data, "vars").items():
        if not _ENV_NAME_RE.match(name):
            v.error("vars", name, f"'{name}' is not a valid var name (letters, digits, '_')")
        found[name] = v.value("vars", dataclasses.replace(VAR_KEYS[0], name=name), raw, envs) or ""
    return found


def _files(v: _Validator, data: Mapping[str, Any], envs: Sequence[str],
           instances: Mapping[str, Instance]) -> dict[str, FileSpec]:
    found: dict[str, FileSpec] = {}
    for name, table, values, instance in _owned(v, data, "files", FILE_KEYS, envs, instances):
        template = values["template"] or ""
        parts = template.split("/")
        if template and (parts[0] != "templates" or len(parts) < 2 or ".." in parts
                         or "" in parts or "\\" in template):
            v.error(table, "template", f"'template' must be a path under the site root's "
                    f"templates/ folder, like \"templates/{name}.j2\", not {template!r}")
        mode = _mode(v, table, values["mode"], directory=False)
        found[name] = FileSpec(name, template, values["path"] or "", mode, instance)
    return found


def _dirs(v: _Validator, data: Mapping[str, Any], envs: Sequence[str],
          instances: Mapping[str, Instance]) -> dict[str, DirSpec]:
    found: dict[str, DirSpec] = {}
    for name, table, values, instance in _owned(v, data, "dirs", DIR_KEYS, envs, instances):
        mode = _mode(v, table, values["mode"], directory=True)
        found[name] = DirSpec(name, values["path"] or "", mode, values["group"], instance)
    return found


def _owned(v: _Validator, data: Mapping[str, Any], top: str, keys: Sequence[Key],
           envs: Sequence[str], instances: Mapping[str, Instance]
           ) -> Iterator[tuple[str, str, dict[str, Any], str]]:
    """(name, table, values, instance) of each ``[top.NAME]`` that an instance's user keeps."""
    for name, raw in _subtables(v, data, top).items():
        table = f"{top}.{name}"
        _check_name(v, table, None, name)
        values = v.table(table, raw, keys, envs)
        yield name, table, values, _instance_of(v, table, values["instance"], instances)


def _instance_of(v: _Validator, table: str, name: str | None,
                 instances: Mapping[str, Instance]) -> str:
    if name and name not in instances:
        v.error(table, "instance", f"instance '{name}' is not declared"
                f"{did_you_mean(name, instances)}")
    return name or ""


def _mode(v: _Validator, table: str, text: str, directory: bool) -> int:
    """An octal mode string; a file's has permission bits only, and neither kind lets everyone
    change what is in it (a dir may, with the sticky bit, as /tmp does)."""
    if not re.fullmatch(r"[0-7]{3,4}", text):
        v.error(table, "mode", f"'mode' must be an octal string like \"{'2770' if directory else '0640'}\""
                f", not {text!r}")
        return 0o700 if directory else 0o600
    mode = int(text, 8)
    if not directory and mode & ~0o777:
        v.error(table, "mode", f"'mode' {text}: a file takes permission bits only (no setuid, "
                "setgid or sticky bit)")
    elif mode & 0o002 and not (directory and mode & 0o1000):
        v.error(table, "mode", f"'mode' {text} lets everyone write to it"
                + (": add the sticky bit (like 1777) or drop o+w" if directory else ""))
    if directory and mode & 0o700 != 0o700:
        v.error(table, "mode", f"'mode' {text}: its owner needs rwx (7..) to manage what is in it")
    elif not directory and not mode & 0o400:
        v.error(table, "mode", f"'mode' {text}: its owner (and programs) could not read it")
    return mode


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
    for text in variants(program.command):
        try:
            shlex.split(text)  # as supervisord splits it
        except ValueError as exc:
            v.error(table, "command", f"'command' cannot be split into words: {exc}")
    if program.name in RESERVED_PROGRAMS:
        v.error(table, None, f"'{program.name}' is the name of "
                f"{RESERVED_PROGRAMS[program.name]}: rename the program")


def _check_texts(v: _Validator, site: Site) -> None:
    """Every placeholder of every text, in the context it is used in; vars first (the others
    may name them), with cycles and the vars that carry a secret."""
    secret_vars = _check_vars(v, site)
    for program in site.programs.values():
        table = f"programs.{program.name}"
        unavailable = {}
        if not program.port:
            unavailable["port"] = "the program has no 'port' table"
        if not program.venv:
            unavailable["venv"] = "the program names no 'venv'"
        texts: dict[str, Text] = {"command": program.command}
        if program.options.get("directory"):
            texts["directory"] = program.options["directory"]
        for key, text in texts.items():
            _check_text(v, site, secret_vars, table, key, text, PROGRAM_USES, unavailable)
        for name, text in program.environment.items():
            _check_text(v, site, secret_vars, table, f"environment.{name}", text,
                        (*PROGRAM_USES, "secret:"), unavailable)
        for key, text in probe_texts(program.options.get("ready")).items():
            _check_text(v, site, secret_vars, table, f"ready.{key}", text, PROGRAM_USES,
                        unavailable)
        for name in program.files:
            spec = site.files.get(name)
            if spec is None:
                v.error(table, "files", f"file '{name}' is not declared in [files]"
                        f"{did_you_mean(name, site.files)}")
            elif spec.instance and program.instance and spec.instance != program.instance:
                v.error(table, "files", f"file '{name}' belongs to instance '{spec.instance}', "
                        f"the program to '{program.instance}': a program can only use files its "
                        "own instance writes (and restarts it for)")
    for spec in site.files.values():
        _check_text(v, site, secret_vars, f"files.{spec.name}", "path", spec.path,
                    FILE_PATH_USES, path=True)
    for dspec in site.dirs.values():
        table = f"dirs.{dspec.name}"
        _check_text(v, site, secret_vars, table, "path", dspec.path, DIR_PATH_USES, path=True,
                    unavailable={"runtime_dir": "a managed dir must survive `down --purge` and "
                                 "reboots, which remove the runtime dir"})
        if dspec.group is not None:
            _check_text(v, site, secret_vars, table, "group", dspec.group, ("env", "site", "var:"))


def _check_vars(v: _Validator, site: Site) -> set[str]:
    """Check ``[vars]``; the names of those that hold a secret (directly or through another)."""
    refers: dict[str, set[str]] = {}
    secret = set()
    for name, value in site.vars.items():
        _check_text(v, site, set(), "vars", name, value, VAR_USES)
        refers[name] = set()
        for text in variants(value):
            for field_name in _fields_or_none(text):
                kind, _, arg = field_name.partition(":")
                if kind == "var":
                    refers[name].add(arg)
                elif kind == "secret":
                    secret.add(name)
    for name in refers:
        path = _cycle_from(name, refers)
        if path:
            v.error("vars", name, f"'{name}' refers back to itself: "
                    + " -> ".join(f"{{var:{n}}}" for n in path))
    changed = True
    while changed:  # a var that names a secret-holding var holds a secret too
        changed = False
        for name, names in refers.items():
            if name not in secret and names & secret:
                secret.add(name)
                changed = True
    return secret


def _cycle_from(start: str, refers: Mapping[str, set[str]]) -> list[str] | None:
    """A path of var references from ``start`` back to itself, if there is one."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        name, path = stack.pop()
        for nxt in sorted(refers.get(name, ())):
            if nxt == start:
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def _fields_or_none(text: str) -> set[str]:
    try:
        return placeholder_fields(text)
    except ValueError:
        return set()


def _check_text(v: _Validator, site: Site, secret_vars: set[str], table: str, key: str,
                value: Text, uses: Sequence[str], unavailable: Mapping[str, str] | None = None,
                path: bool = False) -> None:
    """Each placeholder of ``value`` (each per-env text) is one that ``uses`` allows and that
    names something declared; ``path``: it reads as an absolute path. One message per problem."""
    messages: list[str | None] = []
    for text in variants(value):
        try:
            fields = placeholder_fields(text)
        except ValueError as exc:
            messages.append(f"'{key}': {exc} (write a literal brace as '{{{{' or '}}}}')")
            continue
        messages += [_placeholder_problem(site, secret_vars, key, name, uses, unavailable or {})
                     for name in sorted(fields)]
        if path and text and not text.startswith(("/", "~", "{")):
            messages.append(f"'{key}' must be an absolute path (or start with ~ or a "
                            f"placeholder such as {{state_dir}}), not {text!r}")
    for message in dict.fromkeys(m for m in messages if m):
        v.error(table, key, message)


def _placeholder_problem(site: Site, secret_vars: set[str], key: str, name: str,
                         uses: Sequence[str], unavailable: Mapping[str, str]) -> str | None:
    kind, named, arg = name.partition(":")
    plain = [u for u in uses if not u.endswith(":")]
    if not named:
        if name in unavailable:
            return f"'{key}' uses {{{name}}} but {unavailable[name]}"
        if name not in plain:
            hint = did_you_mean(name, plain, "'{{{}}}'")  # -> '{port}'
            return f"'{key}' uses undefined placeholder {{{name}}}{hint}"
        return None
    shown = f"{{{name}}}"
    if kind not in NAMED_PLACEHOLDERS:
        return f"'{key}' uses undefined placeholder {shown}"
    if not arg:
        return f"'{key}' uses {shown} without a name: {{{kind}:NAME}}"
    if f"{kind}:" not in uses:
        why = _SECRETS_GO if kind == "secret" else "allowed here: " + " ".join(
            "{" + u + ("NAME}" if u.endswith(":") else "}") for u in uses)
        return f"'{key}' cannot use {shown}: {why}"
    if kind == "var":
        if arg not in site.vars:
            return f"'{key}' uses {shown}, which [vars] does not declare{did_you_mean(arg, site.vars)}"
        if arg in secret_vars and "secret:" not in uses:
            return f"'{key}' uses {shown}, which holds a secret: {_SECRETS_GO}"
    elif kind == "port":
        program = site.programs.get(arg)
        if program is None:
            return f"'{key}' uses {shown}, but there is no program '{arg}'" \
                   f"{did_you_mean(arg, site.programs)}"
        if not program.port:
            return f"'{key}' uses {shown}, but program '{arg}' has no port"
    elif kind == "secret" and not _ENV_NAME_RE.match(arg):
        return f"'{key}' uses {shown}: a secret name has letters, digits and '_' only"
    elif kind in ("file", "dir"):
        declared = site.files if kind == "file" else site.dirs
        if arg not in declared:
            return f"'{key}' uses {shown}, which [{kind}s] does not declare" \
                   f"{did_you_mean(arg, declared)}"
    return None


def _check_requirements(v: _Validator, table: str, requirements: list[str]) -> None:
    for item in requirements:
        if not item.strip():
            v.error(table, "requirements", "'requirements' has an empty item")
        elif item.startswith("-"):  # a pip option: only then is its module worth importing
            from siteboot.sources import requirement_problem

            problem = requirement_problem(item)
            if problem:
                v.error(table, "requirements", problem)


def _check_host(v: _Validator, table: str, host: str | None) -> None:
    if host is not None and not _HOST_RE.match(host):
        v.error(table, "host", f"'host' must be a host name like \"jaws.lbl.gov\", not {host!r}")


def same_host(declared: str, actual: str) -> bool:
    """Whether the host name ``declared`` in a site names the host ``actual``: equal ignoring
    case and a trailing dot, or equal in their first label when either is a short name
    (``jaws`` is ``jaws.lbl.gov``; ``jaws.lbl.gov`` is not ``jaws.nersc.gov``)."""
    a, b = declared.lower().rstrip("."), actual.lower().rstrip(".")
    if a == b:
        return True
    if "." in a and "." in b:
        return False
    return a.split(".", 1)[0] == b.split(".", 1)[0]


def _check_preamble(v: _Validator, site: Site) -> None:
    if site.preamble and site.preamble_file:
        v.error("site", "preamble_file", "'preamble' and 'preamble_file' exclude each other: put "
                "the lines in the file, or the file's lines in 'preamble'")
    for line in site.preamble:
        if "\n" in line or "\r" in line or "\x00" in line:
            v.error("site", "preamble", f"'preamble' line {line!r}: one shell line per list item "
                    "(no line breaks)")
        elif not line.strip():
            v.error("site", "preamble", "'preamble' has an empty line")
        elif re.search(r"\s[;#]", line):  # inside each program's command line
            v.error("site", "preamble", f"'preamble' line {line!r}: whitespace followed by ';' "
                    "or '#' reads as a comment in supervisord's config; drop the comment (or the "
                    "space), or move the lines into a preamble_file")
    if site.preamble_file is not None and not site.preamble_file.strip():
        v.error("site", "preamble_file", "'preamble_file' is empty")


def probe_texts(probe: Mapping[str, Any] | None) -> dict[str, str]:
    """The strings of a ``ready`` table, where placeholders may be (none without a probe)."""
    if not probe:
        return {}
    from siteboot.probes import texts

    return texts(probe)


def _check_dependencies(v: _Validator, programs: Mapping[str, Program]) -> None:
    """``depends_on`` names programs of the site, and no program waits for itself."""
    edges: dict[str, list[str]] = {}
    for program in programs.values():
        table = f"programs.{program.name}"
        for dep in program.options["depends_on"]:
            if dep not in programs:
                v.error(table, "depends_on", f"depends on '{dep}', which is not a program of "
                        f"the site{did_you_mean(dep, programs)}")
        edges[program.name] = [d for d in program.options["depends_on"] if d in programs]
    if not any(edges.values()):
        return
    from siteboot.ordering import find_cycle

    cycle = find_cycle(edges)
    if cycle:
        v.error(f"programs.{cycle[0]}", "depends_on",
                "dependency cycle: " + " -> ".join(cycle) + " (nothing in it could ever start)")


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
    """The placeholders of ``text``: ``name`` for ``{name}``, ``kind:NAME`` for ``{kind:NAME}``
    (a var, a program's port, a secret, a file, a dir); ValueError on unbalanced braces."""
    return {name if not arg else f"{name}:{arg}" for name, arg in placeholders(text)}


def placeholders(text: str) -> list[tuple[str, str]]:
    """``(name, NAME)`` for each ``{name}`` (NAME empty) or ``{kind:NAME}`` of ``text``, in
    order; ValueError on unbalanced braces or a placeholder of another shape."""
    import string

    found = []
    for _literal, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"'{{{name}}}' is not a placeholder")
        if conversion or (spec and (name not in NAMED_PLACEHOLDERS or "{" in spec)):
            raise ValueError(f"unsupported placeholder {{{name}{'!' + conversion if conversion else ''}"
                             f"{':' + spec if spec else ''}}}")
        found.append((name, spec or ""))
    return found


def port_clashes(sites: Sequence[Site]) -> list[Problem]:
    """The same port used twice on one host (across envs, programs, instances and sites); an
    instance without ``host`` may run on any host, so it shares a host with every other."""
    seen: dict[int, list[tuple[Site, str, str, str | None]]] = {}
    problems: list[Problem] = []
    for site in sites:
        locator = _Locator(site.path)
        for owner, env, port in site.port_users():
            host = port_host(site, owner)
            label = f"{owner} ({env})" if len(sites) == 1 else f"{site.name}: {owner} ({env})"
            earlier = seen.setdefault(port, [])
            clash = next((e for e in earlier if e[3] is None or host is None
                          or same_host(e[3], host)), None)
            if clash is not None:
                first_site, first_owner, first_env, _ = clash
                first = (f"{first_owner} ({first_env})" if len(sites) == 1
                         else f"{first_site.name}: {first_owner} ({first_env})")
                table = (f"programs.{owner.split(' ', 1)[1]}" if owner.startswith("program ")
                         else f"instances.{owner.split('-', 1)[1]}")
                problems.append(Problem("error", locator.where(table, "port"),
                                        f"port {port} is used by both {first} and {label}"))
            earlier.append((site, owner, env, host))
    return problems


def port_host(site: Site, owner: str) -> str | None:
    """The declared host of a ``port_users`` row's instance (None: any host)."""
    if owner.startswith("program "):
        program = site.programs.get(owner.split(" ", 1)[1])
        instance = site.instances.get(program.instance) if program else None
    else:
        instance = site.instances.get(owner.split("-", 1)[1])
    return instance.host if instance else None


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
