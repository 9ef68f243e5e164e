"""``siteboot status`` without click.

It is what monitoring runs every minute and operators type most: it is parsed here, with a short
parser for exactly the options the click command ``status`` has (a test checks both read the same),
so it never pays for importing click (a third of its run time). Anything this parser does not
recognise (``--help``, a typo, a bundled flag) is left to click.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from siteboot.cli.context import Ctx
from siteboot.errors import STATUS_UNKNOWN, SitebootError, silence_stdout
from siteboot.resources import DEFAULT_ENV


def show_status(ctx: Ctx, instance: str | None, as_json: bool) -> int:
    """Print the status report; returns its monitoring exit code (3 when there is none)."""
    from siteboot import ops
    from siteboot.cli.output import print_json, print_status

    try:
        report = ops.status(ctx.plan(), instance)
    except SitebootError as exc:
        exc.exit_code = STATUS_UNKNOWN
        raise
    try:
        if as_json:
            print_json(report.as_json())
        else:
            print_status(report)
    except BrokenPipeError:  # `siteboot status | head -1`: the verdict stands
        silence_stdout()
    return report.exit_code


_STATUS_VALUES = {"--site": "site", "-s": "site", "--env": "env", "-e": "env", "--root": "root",
                  "--instance": "instance", "-i": "instance"}


def parse_status_args(args: Sequence[str]) -> dict[str, Any] | None:
    """``status``'s options as the click command would read them, or None to let click parse."""
    if not args or args[0] != "status":
        return None
    values: dict[str, Any] = {
        "site": os.environ.get("SITEBOOT_SITE") or None,
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
