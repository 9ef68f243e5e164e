"""The command line. ``main`` is the console entry point.

``siteboot status`` is what monitoring runs every minute and operators type most: ``main``
answers it without importing click (a third of its run time), with a short parser for exactly
the options ``status`` has. Anything that parser does not recognise (``--help``, a typo, a
bundled flag) goes to the click commands in ``siteboot.cli.commands``, which own the CLI.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from siteboot.errors import EXIT_FAILED, STATUS_UNKNOWN, SitebootError
from siteboot.resources import DEFAULT_ENV, DEFAULT_SITE


def debug_enabled(args: Sequence[str] = ()) -> bool:
    return "--debug" in args or os.environ.get("SITEBOOT_DEBUG", "") not in ("", "0")


class Ctx:
    """What every command gets: the chosen site, env and root, resolved lazily."""

    def __init__(self, site: str, env: str, root: str | None) -> None:
        self.site_arg = site
        self.env = env
        self.root_arg = root

    @property
    def root(self) -> Path | None:
        from siteboot.cli.output import echo
        from siteboot.resources import find_root

        return find_root(self.root_arg, notice=lambda text: echo(text, err=True))

    def site_path(self) -> Path:
        from siteboot.resources import resolve_site_path

        return resolve_site_path(self.site_arg, self.root)

    def site(self) -> Any:
        from siteboot.site import load_site

        return load_site(self.site_path())

    def plan(self) -> Any:
        from siteboot.plan import make_plan

        return make_plan(self.site(), self.env)


def show_status(ctx: Ctx, instance: str | None, as_json: bool) -> int:
    """Print the status report; returns its monitoring exit code (3 when there is none)."""
    from siteboot.cli.output import print_json, print_status
    from siteboot.control import status

    try:
        report = status(ctx.plan(), instance)
    except SitebootError as exc:
        exc.exit_code = STATUS_UNKNOWN
        raise
    if as_json:
        print_json(report.as_json())
    else:
        print_status(report)
    return report.exit_code


_STATUS_VALUES = {"--site": "site", "-s": "site", "--env": "env", "-e": "env", "--root": "root",
                  "--instance": "instance", "-i": "instance"}


def parse_status_args(args: Sequence[str]) -> dict[str, Any] | None:
    """``status``'s options as the click command would read them, or None to let click parse."""
    if not args or args[0] != "status":
        return None
    values: dict[str, Any] = {
        "site": os.environ.get("SITEBOOT_SITE") or DEFAULT_SITE,
        "env": os.environ.get("SITEBOOT_ENV") or DEFAULT_ENV,
        "root": os.environ.get("SITEBOOT_ROOT") or None,
        "instance": None, "as_json": False,
    }
    rest = list(args[1:])
    while rest:
        arg = rest.pop(0)
        name, equals, value = arg.partition("=")
        if arg == "--json":
            values["as_json"] = True
        elif equals and name.startswith("--") and name in _STATUS_VALUES:
            values[_STATUS_VALUES[name]] = value
        elif arg in _STATUS_VALUES and rest and not rest[0].startswith("-"):
            values[_STATUS_VALUES[arg]] = rest.pop(0)
        else:
            return None
    return values


def main() -> None:
    """Console entry point: one message and an exit code for expected failures."""
    args = sys.argv[1:]
    fast = None if debug_enabled(args) else parse_status_args(args)
    try:
        if fast is not None:
            from siteboot.cli.output import error

            try:
                code = show_status(Ctx(fast["site"], fast["env"], fast["root"]), fast["instance"],
                                   fast["as_json"])
            except SitebootError as exc:
                error(str(exc))
                code = exc.exit_code
            except KeyboardInterrupt:
                code = 130
            except Exception as exc:  # a bug; still a verdict a monitor reads as "unknown"
                if debug_enabled(args):
                    raise
                error(f"internal error: {type(exc).__name__}: {exc}")
                code = STATUS_UNKNOWN
            sys.exit(code)
        from siteboot.cli.commands import cli

        cli(prog_name="siteboot")
    except Exception as exc:  # a bug, not bad input: keep it short unless asked
        if debug_enabled(args):
            raise
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc}\n"
                         "  rerun with --debug (or SITEBOOT_DEBUG=1) for the traceback\n")
        sys.exit(EXIT_FAILED)
