"""The click commands: parse, call one operation (``siteboot.ops``), print its result.

No logic lives here. Heavy modules (jinja2, virtualenv, psutil, supervisor) are imported by the
operations that need them, so ``siteboot --help`` and ``siteboot status`` start fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click
from click.shell_completion import CompletionItem

from siteboot import __version__, ops, usage
from siteboot.cli.context import Ctx, debug_enabled, remember_invocation
from siteboot.cli.fast import show_status
from siteboot.cli.output import (
    LABEL_COLORS,
    echo,
    error,
    log_tail_lines,
    print_json,
    print_outcomes,
    styled,
    table,
)
from siteboot.cli.progress import reporter
from siteboot.errors import (
    EXIT_BROKEN_PIPE,
    STATUS_UNKNOWN,
    SitebootError,
    SiteFileError,
    exit_code_for,
    silence_output,
)
from siteboot.resources import DEFAULT_ENV, DEFAULT_SITE, site_names

if TYPE_CHECKING:
    from siteboot.deploy import Applied
    from siteboot.deployrequest import RequestOutcome
    from siteboot.instances import LifecycleResult
    from siteboot.logs import LogStream
    from siteboot.runner import RunnerOutcome

F = TypeVar("F", bound=Callable[..., Any])

NAMES_EPILOG = ("NAME is any name `siteboot status` shows: a program, a process (worker_01), an "
                "instance, instance:program, instance:process, instance:* or all; supervisord's "
                "group:process works too.")


# ------------------------------------------------------------------------------------------
# Shell completion: names from the site the command line names so far; never an error


def _completion(names: Callable[[Ctx], Iterable[str]]) -> Callable[..., list[str]]:
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
        given = ctx.params
        try:
            found = list(names(Ctx(given.get("site") or None,  # None: the default site
                                   given.get("env") or DEFAULT_ENV, given.get("root"))))
        except (SitebootError, OSError):  # no site (yet): nothing to offer
            return []
        return [name for name in found if name.startswith(incomplete)]

    return complete


_complete_site_names = _completion(lambda ctx: site_names(ctx.root))


def complete_sites(ctx: click.Context, param: click.Parameter,
                   incomplete: str) -> list[CompletionItem] | list[str]:
    """Site names; a path (``./``, ``~/``, ``/``...) is left to the shell's file completion."""
    if "/" in incomplete or incomplete.startswith((".", "~")):
        return [CompletionItem(incomplete, type="file")]
    return _complete_site_names(ctx, param, incomplete)


complete_envs = _completion(lambda ctx: ctx.site().envs)
complete_instances = _completion(lambda ctx: ctx.plan().instances)
complete_targets = _completion(lambda ctx: ops.target_names(ctx.plan()))


def site_options(func: F) -> F:
    """--site/--env/--root on a command (also read from SITEBOOT_SITE/SITEBOOT_ENV/SITEBOOT_ROOT)."""
    func = click.option("--root", envvar="SITEBOOT_ROOT", metavar="DIR",
                        type=click.Path(file_okay=False),
                        help="Folder holding sites/ and templates/ [default: nearest above cwd].")(func)
    func = click.option("--env", "-e", envvar="SITEBOOT_ENV", default=DEFAULT_ENV,
                        show_default=True, shell_complete=complete_envs,
                        help="Environment (one of the site's envs).")(func)
    func = click.option("--site", "-s", envvar="SITEBOOT_SITE", metavar="SITE",
                        shell_complete=complete_sites,
                        help="Site name under sites/, or a path to a .toml [default: the one "
                        f"sites/default names, or the only one there; else {DEFAULT_SITE}].")(func)
    return func


def instances_option(func: F) -> F:
    """-i/--instance, repeatable: only these instances."""
    return click.option("--instance", "-i", metavar="NAME", multiple=True,
                        shell_complete=complete_instances,
                        help="Only this instance (repeat for several).")(func)


def names_argument(required: bool) -> Callable[[F], F]:
    return click.argument("names", nargs=-1, required=required, shell_complete=complete_targets)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


class SitebootGroup(click.Group):
    """Expected failures become one message and an exit code, never a traceback (bugs are
    reported by ``siteboot.cli.main``, through the same ``exit_code_for``). A reader that went
    away (``| head``) is exit 141 and quiet, not click's exit 1. Commands are listed in
    ``siteboot.usage``'s order, with its summaries (stage 0 answers ``--help`` with them)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        return [n for n in usage.COMMANDS if n in names] + [n for n in names if n not in usage.COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None and cmd_name in usage.COMMANDS:
            command.short_help = usage.COMMANDS[cmd_name]
        return command

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:  # --help, --version and a bare `siteboot` print here
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError:
            silence_output()
            raise click.exceptions.Exit(EXIT_BROKEN_PIPE) from None

    def invoke(self, ctx: click.Context) -> Any:
        remember_invocation([*ctx.protected_args, *ctx.args])
        try:
            return super().invoke(ctx)
        # Ctrl-C here, before click says "Aborted!"; a closed pipe before click makes it exit 1
        except (SitebootError, KeyboardInterrupt, BrokenPipeError) as exc:
            ctx.exit(exit_code_for(exc, debug=debug_enabled() or bool(ctx.params.get("debug")),
                                   error=error))


@click.group(cls=SitebootGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="siteboot")
@click.option("--debug", is_flag=True, help=usage.DEBUG_HELP)
def cli(debug: bool) -> None:
    """Run privilege-separated supervisord instances for a site, without root.

    Shell completion: eval "$(_SITEBOOT_COMPLETE=bash_source siteboot)" (zsh_source, fish_source).
    """


@cli.command()
@site_options
@json_option
def ports(site: str, env: str, root: str | None, as_json: bool) -> None:
    """Print the site's port matrix: one row per program and supervisord, one column per env."""
    result = ops.ports(Ctx(site, env, root).site())
    if as_json:
        print_json(result.as_json())
        return

    def cell(name: str, env: str) -> object:
        port = result.ports[name].get(env)
        if env not in result.auto.get(name, ()):
            return port
        return "auto" if port is None else f"{port} (auto)"

    echo(table(["name", *result.envs], [[name, *(cell(name, e) for e in result.envs)]
                                        for name in result.ports]))
    if result.auto:
        echo("(auto): allocated for you by siteboot; auto: not allocated yet (`siteboot up` "
             "allocates it)")


@cli.command()
@site_options
@click.option("--all", "all_sites", is_flag=True, help="Check every site under sites/, and "
              "clashes between them.")
@click.option("--strict", is_flag=True, help="A port in use on this host is an error, not a warning.")
@json_option
def check(site: str, env: str, root: str | None, all_sites: bool, strict: bool,
          as_json: bool) -> None:
    """Validate site files and the port matrix; report every problem at once."""
    from siteboot.resources import all_site_paths

    ctx = Ctx(site, env, root)
    paths = all_site_paths(ctx.root) if all_sites else [ctx.site_path()]
    result = ops.check(paths, strict=strict)
    if as_json:
        print_json(result.as_json())
    else:
        for problem in result.problems:
            color = "red" if problem.level == "error" else "yellow"
            echo(styled(str(problem), fg=color), err=True)
        verdict = "ok" if not result.errors else f"{len(result.errors)} error(s)"
        echo(f"checked {len(paths)} site file(s): {verdict}"
             + (f", {len(result.warnings)} warning(s)" if result.warnings else ""))
    sys.exit(result.exit_code)


@cli.command()
@site_options
@instances_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write previews here (placeholder key hash), named "
              "supervisord-<site>-<instance>-<env>.conf, instead of the runtime dirs.")
@json_option
def render(site: str, env: str, root: str | None, instance: tuple[str, ...], out: Path | None,
           as_json: bool) -> None:
    """Render one supervisord config per instance from templates/."""
    ctx = Ctx(site, env, root)
    result = ops.render(ctx.plan(), ctx.root, out, instance)
    if as_json:
        print_json(result.as_json())
        sys.exit(result.exit_code)
    for item in result.rendered:
        note = "  (preview: placeholder key hash, not startable as is)" if item.preview else ""
        if item.file:
            note = "  (preview: {secret:NAME} placeholders)" if item.preview else ""
            echo(f"wrote file {item.file}: {item.path}{note}")
            continue
        echo(f"wrote {item.path}{note}")
    for line in result.notes:
        echo(line)
    for name, why in result.skipped:
        echo(f"skipped {name}: {why}")
    sys.exit(result.exit_code)


def _report(result: LifecycleResult, as_json: bool) -> None:
    """Print what happened to each instance; exit 1 if any of them failed."""
    if as_json:
        print_json(result.as_json())
    else:
        print_outcomes(result)
    sys.exit(result.exit_code)


@cli.command()
@site_options
@instances_option
@click.option("--foreground", is_flag=True,
              help="Run supervisord in the foreground (batch jobs, systemd, containers); "
              "needs --instance.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for each supervisord to answer.")
@json_option
def up(site: str, env: str, root: str | None, instance: tuple[str, ...], foreground: bool,
       timeout: float, as_json: bool) -> None:
    """Start the supervisord of every instance you own (others: run as their owner)."""
    ctx = Ctx(site, env, root)
    if foreground:
        ops.run_foreground(ctx.plan(), ctx.root, instance)
    _report(ops.up(ctx.plan(), ctx.root, instance, timeout), as_json)


@cli.command()
@site_options
@instances_option
@click.option("--purge", is_flag=True, help="Also delete the runtime dir with its logs.")
@click.option("--orphans", is_flag=True, help="Also stop what you started for this site and env "
              "that the site no longer describes (see `status`).")
@json_option
def down(site: str, env: str, root: str | None, instance: tuple[str, ...], purge: bool, orphans: bool,
         as_json: bool) -> None:
    """Stop instances you own: shutdown over RPC, then SIGTERM, then SIGKILL; nothing stays.

    A site file that no longer parses does not block this: what the start records say was
    started from it is stopped.
    """
    ctx = Ctx(site, env, root)
    try:
        plan = ctx.plan()
    except SiteFileError as exc:
        result = ops.down_recorded(ctx.site_path(), env)
        if not result.outcomes:
            raise
        error(f"{exc.message}\n  stopping what the records say was started from it")
        _report(result, as_json)
    _report(ops.down(plan, instance, purge, orphans), as_json)


@cli.command()
@site_options
@names_argument(required=False)
@instances_option
@click.option("--all-envs", is_flag=True,
              help="Every env of the site that has an instance running or recorded as started.")
@json_option
def status(site: str, env: str, root: str | None, names: tuple[str, ...],
           instance: tuple[str, ...], all_envs: bool, as_json: bool) -> None:
    """Every instance and program of the env; with NAMEs, only those programs.

    \b
    Exit codes (monitoring plugins): 0 all that should run are RUNNING; 1 some are
    STARTING/BACKOFF or crash-looping, a runtime dir was wiped, an instance is orphaned;
    2 an instance is down or a program FATAL/EXITED/STOPPED; 3 unknown. A reader that goes
    away (`| head`) does not change it.
    """
    sys.exit(show_status(Ctx(site, env, root), instance, as_json, names, all_envs))


def _control(action: str, site: str, env: str, root: str | None, names: Sequence[str],
             as_json: bool) -> None:
    result = ops.control(Ctx(site, env, root).plan(), action, names)
    if as_json:
        print_json(result.as_json())
    else:
        for r in result.outcomes:
            echo(f"{r.instance}:{r.process}: " + styled(r.message, fg="green" if r.ok else "red"))
            for line in log_tail_lines(r.log_tail, "  "):
                echo(line)
    sys.exit(result.exit_code)


def _control_command(action: str, summary: str) -> click.Command:
    """``start``, ``stop`` and ``restart`` differ only in their action."""

    @site_options
    @names_argument(required=True)
    @json_option
    def command(site: str, env: str, root: str | None, names: Sequence[str], as_json: bool) -> None:
        _control(action, site, env, root, names, as_json)

    command.__doc__ = summary
    return click.command(name=action, epilog=NAMES_EPILOG)(command)



for _action, _summary in (("start", "Start programs and wait until they count as started."),
                          ("stop", "Stop programs and wait until they have stopped."),
                          ("restart", "Stop, then start programs.")):
    cli.add_command(_control_command(_action, _summary))


@cli.command(name="tail", epilog=NAMES_EPILOG)
@site_options
@instances_option
@click.argument("name", shell_complete=complete_targets)
@click.option("--follow", "-f", is_flag=True, help="Keep printing, across log rotations.")
@click.option("--stderr", is_flag=True, help="The stderr log instead of stdout.")
@click.option("--bytes", "nbytes", type=int, default=4096, show_default=True,
              help="How much of the end to print first.")
def tail_cmd(site: str, env: str, root: str | None, instance: Sequence[str], name: str,
             follow: bool, stderr: bool, nbytes: int) -> None:
    """Print the end of a program's log (NAME names one process)."""
    def write(text: str) -> None:
        if text:
            echo(text, nl=False)

    ops.tail(Ctx(site, env, root).plan(), name, write, stderr=stderr, follow=follow,
             nbytes=nbytes, instance=instance)


@cli.command(epilog=NAMES_EPILOG)
@site_options
@instances_option
@names_argument(required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing, across log rotations.")
@click.option("--lines", "-n", type=click.IntRange(min=0), default=10, show_default=True,
              help="Lines of each log to print first.")
def logs(site: str, env: str, root: str | None, instance: Sequence[str], names: Sequence[str],
         follow: bool, lines: int) -> None:
    """The logs of every program of the env (or the NAMEs): stdout and stderr, each line
    marked with its process (`web |`, `web err |`); -f follows them all, Ctrl-C ends it."""
    def emit(stream: LogStream, line: str) -> None:
        echo(styled(f"{stream.label} |", fg=LABEL_COLORS[stream.index % len(LABEL_COLORS)])
             + f" {line}")

    ops.logs(Ctx(site, env, root).plan(), names, emit, instance, follow=follow, lines=lines)


@cli.command(context_settings={"ignore_unknown_options": True})
@site_options
@click.option("--instance", "-i", metavar="NAME", required=True, help="The instance.",
              shell_complete=complete_instances)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def ctl(site: str, env: str, root: str | None, instance: str, args: Sequence[str]) -> None:
    """Run the real supervisorctl against one instance: siteboot ctl -i NAME -- ARGS...

    supervisorctl talks to siteboot's relay with a one-time credential and never holds the
    key; a member of a granted group gets state, start/stop/restart/signal and logs.

    \b
    supervisorctl names processes GROUP:PROCESS (`siteboot status --json` shows the group);
    in ARGS, the names `siteboot status` shows (worker_01, a program) are qualified for it.
    Interactively, type GROUP:PROCESS.
    """
    sys.exit(ops.ctl(Ctx(site, env, root).plan(), instance, args))


@cli.command()
@site_options
@click.option("--wheelhouse", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              envvar="SITEBOOT_WHEELHOUSE",
              help="Install from these wheels only (offline nodes).")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for each supervisord to answer.")
@click.option("--no-start", is_flag=True,
              help="Build the venvs and render the configs; start nothing (a CI build stage).")
@json_option
def init(site: str, env: str, root: str | None, wheelhouse: Path | None, timeout: float,
         no_start: bool, as_json: bool) -> None:
    """Bootstrap, build venvs, render, start your instances, print status. Safe to re-run.

    From a checkout with bare python3: python3 -m siteboot init --env dev
    """
    from siteboot.cli.fast import show_init

    sys.exit(show_init(Ctx(site, env, root), wheelhouse, timeout, no_start, as_json))


@cli.command()
@site_options
@json_option
def diff(site: str, env: str, root: str | None, as_json: bool) -> None:
    """What the checkout renders against what each of your running instances has loaded.

    Programs added, removed and changed (which keys; `content venv.NAME` is the venv build),
    server settings. Exit 0 when nothing differs, 1 otherwise.
    """
    ctx = Ctx(site, env, root)
    result = ops.diff(ctx.plan(), ctx.root)
    if as_json:
        print_json(result.as_json())
        sys.exit(result.exit_code)
    for item in result.instances:
        color = {"same": "green", "skipped": "yellow"}.get(item.state, "red")
        detail = f": {item.detail}" if item.detail else ""
        echo(f"{item.instance}: " + styled(item.state, fg=color) + detail)
        for line in item.lines():
            echo(f"  {line}")
    sys.exit(result.exit_code)


def _print_requests(requests: Sequence[RequestOutcome]) -> None:
    """What the deploy agents of other accounts' instances did with our requests."""
    for r in requests:
        color = "green" if r.ok else "red"
        echo(f"{r.instance} (owned by {r.owner}, through its deploy agent): "
             + styled(r.state, fg=color) + (f" {r.release}" if r.release else "")
             + (f": {r.detail}" if r.detail else ""))
        for line in r.restarted + r.messages:
            echo(f"  {line}")


def _print_applied(applied: Applied, heading: str) -> None:
    echo(heading)
    for o in applied.instances.outcomes:
        echo(f"  {o.instance}: {o.action}" + (f": {o.detail}" if o.detail else ""))
        for note in o.notes:
            echo(f"    {note}")


@cli.command()
@site_options
@click.option("--wheelhouse", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              envvar="SITEBOOT_WHEELHOUSE", help="Install from these wheels only (offline nodes).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for each supervisord, and for programs to settle.")
@click.option("--lock-timeout", type=float, default=600.0, show_default=True,
              help="Seconds to wait for another deploy of the site and env to finish.")
@json_option
def deploy(site: str, env: str, root: str | None, wheelhouse: Path | None, timeout: float,
           lock_timeout: float, as_json: bool) -> None:
    """Bring the env to this checkout, restarting exactly what changed; roll back on failure.

    Builds the venvs, records a release, starts your instances that are down, applies the new
    configs to the others, waits until the programs settled and checks the status. If that
    fails, the previous release is applied again and the exit code is 1.
    """
    ctx = Ctx(site, env, root)
    result = ops.deploy(ctx.plan(), ctx.root, wheelhouse, timeout, lock_timeout,
                        progress=reporter(as_json))
    if as_json:
        print_json(result.as_json())
        sys.exit(result.exit_code)
    for v in result.venvs:
        echo(f"venv {v.name}: {v.action} ({v.path})")
    if result.applied is not None:
        _print_applied(result.applied, f"release {result.release}:")
    _print_requests(result.requests)
    if not result.failures:
        echo(styled(f"deployed {result.release}", fg="green")
             + (f" (previous: {result.previous})" if result.previous else ""))
        if any(not r.ok for r in result.requests):
            error("the deploy agent of " + ", ".join(r.instance for r in result.requests
                                                     if not r.ok) + " did not deploy it")
        sys.exit(result.exit_code)
    error(f"deploy of {result.release} failed:\n" + "\n".join(f"  {f}" for f in result.failures))
    if result.rollback is None:
        error("nothing was rolled back: " + ("no release was applied" if result.applied is None
                                              else "there is no previous release"))
    elif result.rolled_back:
        _print_applied(result.rollback, f"rolled back to {result.rollback.release}:")
        error(f"rolled back to {result.rollback.release}, which runs again")
    else:
        error(f"the rollback to {result.rollback.release} failed too:\n"
              + "\n".join(f"  {f}" for f in result.rollback.failures))
    sys.exit(result.exit_code)


@cli.command()
@site_options
@json_option
def releases(site: str, env: str, root: str | None, as_json: bool) -> None:
    """The releases `deploy` made for the site and env (current and previous marked)."""
    result = ops.releases(Ctx(site, env, root).plan())
    if as_json:
        print_json(result.as_json())
        return
    marks = {result.pointers.current: "current", result.pointers.previous: "previous"}
    rows = [[r.id, marks.get(r.id, "failed" if r.failed else ""), r.commit, r.source]
            for r in result.releases]
    echo(table(["release", "", "commit", "from"], rows) if rows else "no releases yet")


@cli.command()
@site_options
@click.option("--to", "to", metavar="ID", help="The release to go back to [default: the previous].")
@click.option("--wheelhouse", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              envvar="SITEBOOT_WHEELHOUSE", help="Install from these wheels only (offline nodes).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for each supervisord, and for programs to settle.")
@click.option("--lock-timeout", type=float, default=600.0, show_default=True,
              help="Seconds to wait for another deploy of the site and env to finish.")
@json_option
def rollback(site: str, env: str, root: str | None, to: str | None, wheelhouse: Path | None,
             timeout: float, lock_timeout: float, as_json: bool) -> None:
    """Apply an earlier release again (its own copies of the site file and template)."""
    ctx = Ctx(site, env, root)
    result = ops.rollback(ctx.plan(), to, wheelhouse, timeout, lock_timeout, reporter(as_json))
    if as_json:
        print_json(result.as_json())
        sys.exit(result.exit_code)
    if result.release:
        _print_applied(result.applied, f"release {result.release}:")
    _print_requests(result.requests)
    if result.applied.failures:
        error(f"rollback to {result.release} failed:\n"
              + "\n".join(f"  {f}" for f in result.applied.failures))
    elif result.release:
        echo(styled(f"rolled back to {result.release}", fg="green")
             + (f" (was {result.replaced})" if result.replaced else ""))
    sys.exit(result.exit_code)


@cli.command(name="rotate-key")
@site_options
@instances_option
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for each supervisord to answer again.")
@json_option
def rotate_key(site: str, env: str, root: str | None, instance: tuple[str, ...], timeout: float,
               as_json: bool) -> None:
    """Give your instances new keys: a running supervisord restarts on its new key (its
    programs restart too), and a group grant is published again. Use it when a key may have
    leaked."""
    ctx = Ctx(site, env, root)
    _report(ops.rotate_key(ctx.plan(), ctx.root, instance, timeout), as_json)


@cli.command()
@site_options
@click.option("--all-envs", is_flag=True,
              help="Every env you have started this site in (from your start records).")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for each supervisord, and for programs to settle.")
@json_option
def revive(site: str, env: str, root: str | None, all_envs: bool, timeout: float,
           as_json: bool) -> None:
    """After maintenance, a reboot or a fault: bring back everything of yours, safely re-runnable.

    Starts supervisords that are down, killed, hung or lost their runtime dir (cleaning up
    orphaned programs first), restores a wiped runtime dir without restarting programs, and
    starts programs that should run (not those an operator stopped). Exit 0 when all runs.
    """
    ctx = Ctx(site, env, root)
    first = ctx.plan()
    plans = [first if e == first.env else ctx.plan_for(e) for e in ops.revive_envs(first, all_envs)]
    result = ops.revive(plans, ctx.root, timeout, progress=reporter(as_json))
    if as_json:
        print_json(result.as_json())
    else:
        for line in result.others():
            echo(line)
        for line in result.actions() or ["nothing to do"]:
            echo(line)
    sys.exit(result.exit_code)


@cli.command()
@site_options
@click.option("--install", is_flag=True, help="Add the lines to your crontab (idempotent).")
@click.option("--remove", is_flag=True, help="Take them out of your crontab.")
@json_option
def cron(site: str, env: str, root: str | None, install: bool, remove: bool, as_json: bool) -> None:
    """Print (or install) crontab lines that run `siteboot revive` at boot and every 5 minutes."""
    if install and remove:
        raise click.UsageError("--install and --remove exclude each other")
    ctx = Ctx(site, env, root)
    result = ops.cron(ctx.plan(), ctx.root, install=install, remove=remove)
    if as_json:
        print_json(result.as_json())
    elif result.action == "printed":
        echo("\n".join(result.lines))
    else:
        echo(f"crontab: {result.action} ({len(result.lines) - 2} lines for site {result.site}; "
             f"log: {result.log})")


@cli.command()
@site_options
@json_option
def doctor(site: str, env: str, root: str | None, as_json: bool) -> None:
    """Explain what is wrong after maintenance (dirs, keys, ports, stale files, orphans, venvs,
    crontab), each with its fix. Changes nothing. Exit 0 when healthy, 1 otherwise."""
    ctx = Ctx(site, env, root)
    result = ops.doctor(ctx.plan(), ctx.root)
    if as_json:
        print_json(result.as_json())
    else:
        for finding in result.findings:
            mark = styled(f"{'ok':>7}", fg="green") if finding.ok else styled("problem", fg="red")
            echo(f"{mark}  {finding.check}: {finding.message}")
            if finding.fix:
                echo(f"         fix: {finding.fix}")
        echo(f"{len(result.problems)} problem(s)" if result.problems else "healthy")
    sys.exit(result.exit_code)


# ------------------------------------------------------------------------------------------
# gitlab-runner


@cli.group()
def runner() -> None:
    """The site's gitlab-runner ([runner] in the site file): status, revive, drain, stop.

    \b
    Only its account (the owner of its instance) may revive, drain or stop it.
    """


@runner.command(name="status")
@site_options
@json_option
def runner_status(site: str, env: str, root: str | None, as_json: bool) -> None:
    """Whether the runner runs (pid, uptime, mode, config; two runners on one config).

    \b
    Exit codes (monitoring plugins): 0 running; 1 starting, or running with a problem;
    2 not running (or no [runner]); 3 unknown.
    """
    try:
        plan = Ctx(site, env, root).plan()
    except SitebootError as exc:  # a bad site file is no verdict: unknown, as `siteboot status`
        exc.exit_code = STATUS_UNKNOWN
        raise
    result = ops.runner_status(plan)
    if as_json:
        print_json(result.as_json())
        sys.exit(result.exit_code)
    color = {0: "green", 1: "yellow", 2: "red"}.get(result.exit_code)
    head = f"gitlab-runner ({result.mode}, instance {result.instance}, user {result.user}): "
    pids = f", pid {', '.join(map(str, result.pids))}" if result.pids else ""
    uptime = f", uptime {result.uptime_s}s" if result.uptime_s is not None else ""
    echo(styled(head, bold=True) + styled(result.state, fg=color) + pids + uptime)
    if result.detail:
        echo(f"  {result.detail}")
    echo(f"  config: {result.config}")
    if result.log:
        echo(f"  log: {result.log}")
    for problem in result.problems:
        echo(styled(f"  problem: {problem}", fg="yellow"))
    for note in result.notes:
        echo(f"  {note}")
    sys.exit(result.exit_code)


def _print_runner_outcome(result: RunnerOutcome, as_json: bool) -> None:
    if as_json:
        print_json(result.as_json())
    else:
        color = "red" if not result.ok else "yellow" if result.action == "left stopped" else "green"
        echo("gitlab-runner: " + styled(result.action, fg=color)
             + (f": {result.detail}" if result.detail else ""))
        for note in result.notes:
            echo(f"  {note}")
    sys.exit(result.exit_code)


def _progress(as_json: bool) -> Callable[[str], None] | None:
    return None if as_json else lambda line: echo(line, err=True)


@runner.command(name="revive")
@site_options
@json_option
def runner_revive(site: str, env: str, root: str | None, as_json: bool) -> None:
    """Start the runner unless one runs: never two on one config, however many revive at once."""
    _print_runner_outcome(ops.runner_revive(Ctx(site, env, root).plan()), as_json)


@runner.command(name="drain")
@site_options
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="How long to wait for running jobs [default: drain_timeout; detached only].")
@json_option
def runner_drain(site: str, env: str, root: str | None, timeout: float | None, as_json: bool) -> None:
    """Graceful shutdown (SIGQUIT): finish running jobs, take no new ones; wait and report."""
    _print_runner_outcome(ops.runner_drain(Ctx(site, env, root).plan(), timeout, _progress(as_json)),
                          as_json)


@runner.command(name="stop")
@site_options
@json_option
def runner_stop(site: str, env: str, root: str | None, as_json: bool) -> None:
    """Stop the runner now (SIGTERM: running jobs are aborted; SIGKILL if it lingers)."""
    _print_runner_outcome(ops.runner_stop(Ctx(site, env, root).plan(), _progress(as_json)), as_json)
