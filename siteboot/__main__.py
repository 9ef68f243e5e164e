"""``python -m siteboot``: stage 0. Only the standard library at module level.

From a checkout (``setup.cfg`` beside the package) on a machine with nothing but python3:

- ``init`` outside the tool venv: build or update the tool venv (siteboot/bootstrap/), then
  re-execute ``<venv>/bin/python -I -m siteboot init ...`` with SITEBOOT_BOOTSTRAPPED=1;
- any other command outside the tool venv: re-execute into the tool venv when it is current;
  else run in-process when siteboot's dependencies are importable (a dev env); else say to run
  ``python3 -m siteboot init`` (exit 2);
- ``--help`` and ``--version`` (``init --help`` too) never build anything: without a tool venv
  or the dependencies, stage 0 answers them itself (``siteboot.usage``);
- inside the tool venv, after a re-exec, or installed from a wheel: just run the CLI.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from siteboot.bootstrap import locate
from siteboot.errors import SitebootError, UsageError, exit_code_for
from siteboot.hints import remember

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Callable

    from siteboot.cli.progress import TerminalProgress

BOOTSTRAP = "bootstrap"
REEXEC = "reexec"
CLI = "cli"
MISSING = "missing"
HELP = "help"

_HELP_OPTIONS = frozenset({"--help", "-h", "--version"})

# Options that take a value, so that their value is not mistaken for the command.
_VALUE_OPTIONS = frozenset({"--site", "-s", "--env", "-e", "--root", locate.WHEELHOUSE_OPTION})


def first_command(argv: Sequence[str]) -> str | None:
    """The first word of argv that is neither an option nor an option's value."""
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--":
            return argv[index + 1] if index + 1 < len(argv) else None
        if arg.startswith("-") and arg != "-":
            skip = arg in _VALUE_OPTIONS
            continue
        return arg
    return None


def asks_for_help(argv: Sequence[str]) -> bool:
    """``--help``, ``-h`` or ``--version`` before any ``--``, or no command at all (click shows
    its help then)."""
    for arg in argv:
        if arg == "--":
            break
        if arg in _HELP_OPTIONS:
            return True
    return first_command(argv) is None


def choose_action(argv: Sequence[str], *, checkout: Path | None, venv: Path | None, prefix: str,
                  reexeced: bool, venv_ready: Callable[[], bool],
                  deps_available: Callable[[], bool]) -> str:
    """What stage 0 does with this command line: BOOTSTRAP, REEXEC, CLI, HELP or MISSING.

    ``venv_ready`` (the tool venv exists, its stamp matches the python version its
    ``pyvenv.cfg`` records, its python is executable: no process is started) and
    ``deps_available`` (this interpreter has siteboot's dependencies) are only called when needed.
    """
    if checkout is None or venv is None:  # installed from a wheel: nothing to bootstrap
        return CLI
    if locate.same_path(prefix, venv):  # already in the tool venv
        return CLI
    if reexeced:  # exec'd into the venv, yet not in it: never loop
        return CLI if deps_available() else MISSING
    helping = asks_for_help(argv)
    if first_command(argv) == "init" and not helping:
        return BOOTSTRAP
    if venv_ready():
        return REEXEC
    if deps_available():
        return CLI
    return HELP if helping else MISSING


def _venv_ready(checkout: Path, venv: Path) -> bool:
    if not (venv / locate.STAMP_NAME).is_file():
        return False
    from siteboot.bootstrap import stamp  # not at the top: runs inside the tool venv never ask

    try:
        return stamp.is_current(checkout, venv)
    except SitebootError:
        return False


def _deps_available(checkout: Path) -> bool:
    from siteboot.bootstrap import requirements  # not at the top: only outside the tool venv

    try:
        requires = requirements.read_requirements(checkout / "setup.cfg")
    except SitebootError:
        return False
    return requirements.distributions_installed(requirements.required_distributions(requires))


def missing_message(venv: Path, reexeced: bool) -> str:
    if reexeced:
        return (f"re-executed into {locate.venv_python(venv)}, but it does not run in the tool "
                f"venv (sys.prefix is {sys.prefix}) and siteboot's dependencies are missing; "
                f"remove {venv} and run `{locate.init_command()}`")
    if (venv / locate.BUILDING_NAME).is_file() and not (venv / locate.STAMP_NAME).is_file():
        return (f"the tool venv at {venv} was left half-built by an interrupted "
                f"`{locate.INIT_COMMAND}`; run `{locate.init_command()}` again")
    if (venv / "pyvenv.cfg").is_file() and not (venv / locate.STAMP_NAME).is_file():
        return (f"siteboot's dependencies are not installed for {sys.executable}, and {venv} is a "
                f"virtualenv that `{locate.INIT_COMMAND}` did not make; use its python, or set "
                f"{locate.ENV_VENV} to a new path and run `{locate.init_command()}`")
    if (venv / "pyvenv.cfg").is_file():
        return (f"the tool venv at {venv} is out of date or broken; run "
                f"`{locate.init_command()}` to update it")
    return (f"siteboot's dependencies are not installed; run `{locate.init_command()}` "
            f"to build its tool venv at {venv}")


def stage0(args: Sequence[str], reexeced: bool) -> None:
    """Bootstrap or re-execute as ``choose_action`` says; returns when the CLI should run here."""
    checkout = locate.find_checkout()
    venv = locate.tool_venv_path(checkout) if checkout is not None else None
    action = choose_action(
        args, checkout=checkout, venv=venv, prefix=sys.prefix, reexeced=reexeced,
        venv_ready=lambda: checkout is not None and venv is not None and _venv_ready(checkout, venv),
        deps_available=lambda: checkout is not None and _deps_available(checkout))
    if action == CLI:
        return
    assert checkout is not None
    assert venv is not None
    if action == MISSING:
        raise UsageError(missing_message(venv, reexeced))
    if action == HELP:
        print(help_text(args))
        raise SystemExit(0)
    if action == BOOTSTRAP:
        if sys.version_info < locate.MIN_PYTHON:
            raise UsageError(f"siteboot needs Python {'.'.join(map(str, locate.MIN_PYTHON))} or "
                             f"newer; {sys.executable} is {sys.version.split()[0]}")
        from siteboot.bootstrap import build  # not at the top: only `init` builds

        builder = build.Bootstrapper(checkout, venv, wheelhouse=locate.wheelhouse_from(args))
        progress = _terminal_progress(args)
        if progress is not None:  # its notes too: they must not cut through the live line
            builder.log, builder.progress = progress.note, progress
        locate.reexec(builder.ensure(), args)
    else:
        locate.reexec(locate.venv_python(venv), args)


def help_text(args: Sequence[str]) -> str:
    """What ``--help`` or ``--version`` shows before the tool venv exists."""
    from siteboot import __version__, usage

    if "--version" in args[:args.index("--") if "--" in args else len(args)]:
        return usage.version_line(__version__)
    command = first_command(args)
    if command is not None and command not in usage.COMMANDS:
        from siteboot.errors import did_you_mean

        raise UsageError(f"no such command '{command}'" + did_you_mean(command, usage.COMMANDS),
                         "`python3 -m siteboot --help` lists them")
    return usage.stage0_help(command)


def _terminal_progress(args: Sequence[str]) -> TerminalProgress | None:
    """The tool venv build shown live where stderr is a terminal (not with ``--json``)."""
    from siteboot.cli.progress import TerminalProgress, live_wanted

    if "--json" in args or not live_wanted(sys.stderr):
        return None
    return TerminalProgress(sys.stderr, prefix="siteboot: ")


def run_cli(args: Sequence[str]) -> None:
    from siteboot.cli import main

    sys.argv = [sys.argv[0], *args]
    main()


def run(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    # Consumed here, so that processes started from the tool venv do not inherit it.
    reexeced = os.environ.pop(locate.ENV_BOOTSTRAPPED, "") == "1"
    remember(args)  # for the commands in messages (`python3 -m siteboot init --site ...`)
    try:
        stage0(args, reexeced)
    except BaseException as exc:  # the CLI's own handler: one message and an exit code
        sys.exit(exit_code_for(exc, debug=locate.debug_enabled(args),
                               error=lambda text: print(f"error: {text}", file=sys.stderr,
                                                        flush=True)))
    run_cli(args)


if __name__ == "__main__":
    run()
