"""supervisord configs from Jinja2 templates: text in, text out (no files, dirs or locks).

Values reach supervisord through two parsers that can silently change them: its INI reader
(``%`` interpolation, `` ;``/`` #`` inline comments, no multi-line values) and its
``environment=`` reader (a non-POSIX shlex that strips quote characters from both ends of each
value). ``representable`` finds every value that would not survive, so it is refused with the
program and key named, instead of being rendered changed.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from siteboot import __version__
from siteboot.errors import RenderError, SitebootError, did_you_mean
from siteboot.plan import (
    RPC_USERNAME,
    FilePlan,
    InstancePlan,
    Plan,
    ProgramPlan,
    Sealed,
    reveal,
    socket_path_problem,
)
from siteboot.resources import template_dirs
from siteboot.site import DEPLOY_AGENT_PROGRAM, HEALER_PROGRAM, PROGRAM_KEYS

if TYPE_CHECKING:
    from siteboot.secretstore import SecretStore

CONFIG_TEMPLATE = "supervisord.conf.j2"
_INLINE_COMMENT = re.compile(r"\s[;#]")
# The template writes ``key = value``: a value starting with ';' or '#' follows a space too.
_LEADING_COMMENT = re.compile(r"^[;#]")


def percentescape(value: Any) -> str:
    """Double ``%`` so supervisord's interpolation (``%(ENV_X)s``, ``%(here)s``) leaves it alone."""
    return str(value).replace("%", "%%")


def shellquote(value: Any) -> str:
    return shlex.quote(str(value))


def envquote(value: str) -> str:
    """Quote one ``environment=`` value so supervisord's shlex returns it unchanged."""
    quote = "'" if '"' in value else '"'
    return quote + percentescape(value) + quote


def ini_problem(value: str) -> str | None:
    if "\n" in value or "\r" in value:
        return "contains a line break, which an INI value cannot hold"
    if "\x00" in value:
        return "contains a NUL byte"
    if _INLINE_COMMENT.search(value):
        return ("contains whitespace followed by ';' or '#', which supervisord reads as the "
                "start of a comment")
    if _LEADING_COMMENT.match(value):
        return "starts with ';' or '#', which supervisord reads as the start of a comment"
    return None


def path_problem(value: str) -> str | None:
    problem = ini_problem(value)
    if problem:
        return problem
    if value != value.strip():
        return "starts or ends with whitespace, which supervisord's INI reader strips"
    return None


def env_problem(value: str) -> str | None:
    problem = ini_problem(value)
    if problem:
        return problem
    if '"' in value and "'" in value:
        return ("holds both quote kinds (' and \"); supervisord's environment= syntax cannot carry "
                "that")
    if value and (value[0] in "'\"" or value[-1] in "'\""):
        return ("starts or ends with a quote character, which supervisord's environment= parser "
                "strips")
    return None


def representable(programs: list[ProgramPlan]) -> list[str]:
    """Every value of ``programs`` that supervisord would not read back unchanged."""
    problems = []
    for program in programs:
        fields: list[tuple[str, str, str | None]] = [
            ("command", program.command, ini_problem(program.command))]
        if program.directory:
            fields.append(("directory", program.directory, path_problem(program.directory)))
        for name, value in program.environment.items():
            fields.append((f"environment.{name}", value, env_problem(value)))
        for key, value, problem in fields:
            if problem:
                problems.append(f"[programs.{program.name}] {key} = {value!r}: {problem}")
    return problems


# Makes the jinja2.BytecodeCache that keeps compiled templates between runs, or None
_bytecode_cache: Callable[[], Any] | None = None


def use_bytecode_cache(make_cache: Callable[[], Any] | None) -> None:
    """Where compiled templates are kept between runs (``templatecache.template_cache``; None:
    nowhere), made when a template is first needed. The commands that render set it; rendering
    itself reads and writes no file for it."""
    global _bytecode_cache
    _bytecode_cache = make_cache


def _environment(plan_dirs: tuple[Path, ...]) -> Any:
    return _cached_environment(plan_dirs, _bytecode_cache)


@functools.lru_cache(maxsize=8)
def _cached_environment(plan_dirs: tuple[Path, ...],
                        make_cache: Callable[[], Any] | None) -> Any:
    """One environment per template search path and process: Jinja2 then compiles each template
    once (it checks the file's mtime on every use) instead of once per instance and preview,
    and with a bytecode cache (``make_cache``) not even once while the template stays the same."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    # A template is data, not code: a site root's own template cannot reach Python internals.
    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(d) for d in plan_dirs]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        bytecode_cache=make_cache() if make_cache is not None else None,
    )
    env.filters["percentescape"] = percentescape
    env.filters["shellquote"] = shellquote
    env.filters["envquote"] = envquote
    return env


def generic_options(program: ProgramPlan, held: bool = False) -> list[tuple[str, Any]]:
    """(supervisord option, value) for every declared key that maps straight onto one.

    ``held``: an operator stopped every process of it; a supervisord started afresh must not
    start it, not even for the moment before siteboot would stop it again.
    """
    rows = []
    for key in PROGRAM_KEYS:
        if key.supervisor:
            # `autostart` in a site file means "should run"; one that waits for others does,
            # but not at once: siteboot (or the healer) starts it once they are ready
            value = (program.starts_with_supervisord and not held if key.name == "autostart"
                     else program.options[key.name])
            rows.append((key.supervisor, str(value).lower() if isinstance(value, bool) else value))
    return rows


def held_programs(inst: InstancePlan, stopped: set[str] | frozenset[str]) -> frozenset[str]:
    """Programs of ``inst`` all of whose processes an operator stopped (``stopped``: processes)."""
    return frozenset(p.name for p in inst.programs
                     if set(p.process_names()) <= set(stopped))


def healer_section(inst: InstancePlan) -> dict[str, str] | None:
    """The ``[eventlistener:siteboot-healer]`` of an instance that heals (``healer``), run by
    the interpreter running siteboot (the tool venv's), or None."""
    if not inst.heals:
        return None
    import sys

    command = [sys.executable, "-I", "-m", "siteboot.healer", str(inst.healer_spec_path)]
    return {"name": HEALER_PROGRAM, "command": shlex.join(command),
            "log": str(inst.childlogdir / f"{HEALER_PROGRAM}.err.log")}


def agent_section(inst: InstancePlan) -> dict[str, str] | None:
    """The ``[program:siteboot-deploy-agent]`` of an instance that grants deploy (``agent``),
    run by the interpreter running siteboot (the tool venv's), or None."""
    if not inst.grants_deploy:
        return None
    import sys

    command = [sys.executable, "-I", "-m", "siteboot.agent", str(inst.agent_spec_path)]
    return {"name": DEPLOY_AGENT_PROGRAM, "command": shlex.join(command),
            "log": str(inst.childlogdir / f"{DEPLOY_AGENT_PROGRAM}.err.log")}


def _after_preamble(plan: Plan, inst: InstancePlan,
                    listener: dict[str, str] | None) -> dict[str, str] | None:
    """The event listener runs on the tool venv's interpreter, which may need the site's login
    preamble (a module's libraries) as much as the programs do."""
    preamble = plan.preamble(inst.user)
    if listener is None or not preamble:
        return listener
    from siteboot.login import wrap_command

    return {**listener, "command": wrap_command(preamble, listener["command"])}


def with_secrets(inst: InstancePlan, secrets: SecretStore) -> tuple[InstancePlan, list[str]]:
    """``inst`` with the secrets of its programs' environments filled in, and every revealed
    value supervisord could not carry (said with the secret's name, never its value)."""
    programs, problems = [], []
    for program in inst.programs:
        environment = {}
        for name, value in program.environment.items():
            environment[name] = reveal(value, secrets.get)
            if not isinstance(value, Sealed):
                continue
            problem = env_problem(environment[name])
            if problem:
                problems.append(f"[programs.{program.name}] environment.{name} = {value!r} "
                                f"(secret {', '.join(value.secret_names)} filled in): {problem}")
        programs.append(dataclasses.replace(program, environment=environment))
    return dataclasses.replace(inst, programs=programs), problems


def config_context(plan: Plan, inst: InstancePlan, password: str, preview: bool,
                   content: dict[str, dict[str, str]] | None) -> dict[str, Any]:
    """What the supervisord template sees, but ``generic_options`` (a function of ``inst``'s
    programs and the held ones): also what ``renderstamp`` digests, so that nothing the
    template is given can change unnoticed."""
    return {
        "version": __version__, "site": plan.site, "env": plan.env, "inst": inst,
        "preview": preview, "username": RPC_USERNAME, "password": password,
        "content": content or {},
        "healer": _after_preamble(plan, inst, healer_section(inst)),
        "agent": _after_preamble(plan, inst, agent_section(inst)),
    }


def render_instance(plan: Plan, inst: InstancePlan, password: str, preview: bool,
                    root: Path | None, secrets: SecretStore | None = None,
                    held: frozenset[str] = frozenset(),
                    content: dict[str, dict[str, str]] | None = None) -> str:
    """The supervisord config text of ``inst``; ``password`` is a ``{SHA}`` hash.

    ``held``: programs an operator stopped (rendered ``autostart = false``); ``content``:
    program -> {name: digest} of what it runs beyond its section (``siteboot.content``),
    rendered as comments that siteboot compares and supervisord ignores.

    Refuses (``RenderError``, exit 2) what supervisord could not carry unchanged, before any
    directory, key or file exists: callers validate with a preview first. A secret in a
    program's environment is filled in from ``secrets``; a preview shows ``{secret:NAME}``.
    """
    import jinja2

    socket_problem = socket_path_problem(inst)
    if socket_problem:
        raise RenderError(f"{plan.site.path}: instance {inst.name}: {socket_problem}")
    problems = representable(inst.programs)
    if not preview and secrets is not None and not problems:
        inst, problems = with_secrets(inst, secrets)
    runtime_problem = ini_problem(str(inst.runtime_dir))
    if runtime_problem:
        problems.insert(0, f"[site] runtime_dir = {str(inst.runtime_dir)!r}: {runtime_problem}")
    if problems:
        raise RenderError(
            f"{plan.site.path}: {len(problems)} value(s) cannot be written into a supervisord "
            "config unchanged:\n" + "\n".join(f"  {p}" for p in problems),
            "change the value, or pass it through a file the program reads")
    try:
        template = _environment(tuple(template_dirs(root))).get_template(CONFIG_TEMPLATE)
        return str(template.render(
            **config_context(plan, inst, password, preview, content),
            generic_options=lambda program: generic_options(program, program.name in held),
        ))
    except jinja2.UndefinedError as exc:
        raise RenderError(f"template {CONFIG_TEMPLATE}: {exc.message}",
                          "check the site's templates/ override against the shipped one") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {CONFIG_TEMPLATE}: {exc}") from None


# supervisord options as the site file names them, to say which keys of a program changed
SITE_KEY_OF_OPTION = {
    **{key.supervisor: key.name for key in PROGRAM_KEYS if key.supervisor},
    "process_name": "numprocs",
    "stdout_logfile_maxbytes": "log_maxbytes", "stderr_logfile_maxbytes": "log_maxbytes",
    "stdout_logfile_backups": "log_backups", "stderr_logfile_backups": "log_backups",
}


def template_context_names() -> dict[str, str]:
    """What a site's own template may use (documented in the README)."""
    return {
        "site": "the Site model (name, envs, instances, programs)",
        "env": "the env being rendered",
        "inst": "the InstancePlan: paths, port, identifier, programs",
        "preview": "true when the password is a placeholder",
        "username": "the RPC user name",
        "password": "the {SHA} hash of the instance key (or the placeholder)",
        "content": "program name -> {name: digest} of its venv build and files",
        "generic_options": "generic_options(program): (supervisord option, value) pairs",
        "healer": "the event listener to render (name, command, log), or none",
        "agent": "the deploy agent program to render (name, command, log), or none",
    }


@dataclass(frozen=True)
class RenderedFile:
    """A ``[files.NAME]`` rendered for one instance and env, not written."""

    name: str
    path: Path
    mode: int
    text: str  # a preview shows {secret:NAME} where a secret goes
    users: tuple[str, ...]  # the programs that read it
    preview: bool

    @property
    def sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def render_files(plan: Plan, inst: InstancePlan, root: Path | None,
                 secrets: SecretStore | None) -> list[RenderedFile]:
    """Every ``[files]`` entry of ``inst``, rendered (nothing written); ``secrets`` None: a
    preview, with ``{secret:NAME}`` where each secret goes.

    A template is data: rendered in Jinja2's sandbox with StrictUndefined, from the site root's
    ``templates/`` (trusted like the supervisord template) or the shipped one.
    """
    if not inst.files:
        return []
    environment = _environment(tuple(template_dirs(root)))
    context = file_context(plan, inst, secrets)
    return [RenderedFile(f.name, f.path, f.mode, _render_file(environment, f, context, secrets),
                         f.users, secrets is None)
            for f in inst.files]


def _render_file(environment: Any, file: FilePlan, context: Mapping[str, Any],
                 secrets: SecretStore | None) -> str:
    import jinja2

    name = file.template.split("/", 1)[1]  # "templates/x.j2" -> "x.j2" in the template dirs
    where = f"file {file.name}: template {file.template}"
    try:
        return str(environment.get_template(name).render(**context))
    except SitebootError:
        raise
    except jinja2.TemplateNotFound:
        raise RenderError(f"{where} not found", "templates are looked up in the site root's "
                          "templates/, then the shipped one") from None
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"{where}, line {exc.lineno}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise RenderError(f"{where}: {_scrubbed(exc.message or str(exc), secrets)}") from None
    except Exception as exc:  # the template's own mistake: say it, never a traceback
        raise RenderError(f"{where}: {type(exc).__name__}: {_scrubbed(str(exc), secrets)}") \
            from None


def _scrubbed(text: str, secrets: SecretStore | None) -> str:
    return secrets.scrub(text) if secrets is not None else text


class _Revealing(Mapping[str, str]):
    """``vars`` as a template sees them: a var's secrets are read only when it is used."""

    def __init__(self, values: Mapping[str, str], secret: Callable[[str], str]) -> None:
        self._values = values
        self._secret = secret

    def __getitem__(self, name: str) -> str:
        return reveal(self._values[name], self._secret)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def file_context(plan: Plan, inst: InstancePlan, secrets: SecretStore | None) -> dict[str, Any]:
    """What a ``[files]`` template sees (documented in the README)."""
    def secret(name: str) -> str:
        return secrets.get(str(name)) if secrets is not None else f"{{secret:{name}}}"

    def port(name: str) -> int:
        if name not in plan.ports:
            raise RenderError(f"port({name!r}): no program '{name}' with a port in site "
                              f"{plan.site.name}{did_you_mean(str(name), plan.ports)}")
        return plan.ports[name]

    everyone = list(plan.instances.values())
    return {
        "env": plan.env, "site": plan.site.name, "instance": inst.name, "user": inst.user,
        "state_dir": str(inst.state_dir), "runtime_dir": str(inst.runtime_dir),
        "vars": _Revealing(plan.vars, secret), "ports": dict(plan.ports), "port": port,
        "secret": secret,
        "files": {f.name: str(f.path) for i in everyone for f in i.files},
        "dirs": {d.name: str(d.path) for i in everyone for d in i.dirs},
        "venvs": {name: str(plan.venv_path(name, inst.user)) for name in plan.site.venvs},
    }


def render_preview(plan: Plan, inst: InstancePlan, root: Path | None) -> str:
    """The config of ``inst`` with a placeholder key hash: safe to show, not startable as is."""
    from siteboot.keys import PLACEHOLDER_HASH

    return render_instance(plan, inst, PLACEHOLDER_HASH, True, root)
