"""``siteboot status`` without click.

It is what monitoring runs every minute and operators type most: it is parsed here, with a short
parser for exactly the options the click command ``status`` has (a test checks both read the same),
so it never pays for importing click (a third of its run time). Anything this parser does not
recognise (``--help``, a typo, a bundled flag) is left to click.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from siteboot.cli.context import Ctx
from siteboot.errors import STATUS_UNKNOWN, SitebootError, silence_output
from siteboot.resources import DEFAULT_ENV

if TYPE_CHECKING:
    from siteboot.control import SiteStatus, StatusResult


def show_status(ctx: Ctx, instance: Sequence[str] = (), as_json: bool = False,
                names: Sequence[str] = (), all_envs: bool = False) -> int:
    """Print the status report; returns its monitoring exit code (3 when there is none).

    The verdict stands when the reader goes away (``siteboot status | head -1``): status exits
    0-3 whatever happens to its output.
    """
    if not names and not all_envs:  # the supervisords answer while siteboot loads
        ctx.send_status_requests(instance)
    from siteboot import ops

    try:
        plan = ctx.plan()
        if all_envs:
            plans = [plan if env == plan.env else ctx.plan_for(env) for env in plan.site.envs]
            site = ops.status_all_envs(plans, plan.env, instance, names)
            result: SiteStatus | StatusResult = site
            reports = site.reports
        else:
            result = ops.status(plan, instance, names)
            reports = [result]
    except SitebootError as exc:
        exc.exit_code = STATUS_UNKNOWN
        raise
    from siteboot.cli.output import echo, print_json, print_status

    try:
        if as_json:
            print_json(result.as_json())
        else:
            for n, report in enumerate(reports):
                if n:
                    echo()
                print_status(report)
    except BrokenPipeError:
        silence_output()
    return result.exit_code


_STATUS_VALUES = {"--site": "site", "-s": "site", "--env": "env", "-e": "env", "--root": "root",
                  "--instance": "instance", "-i": "instance"}
_STATUS_FLAGS = {"--json": "as_json", "--all-envs": "all_envs"}


def parse_status_args(args: Sequence[str]) -> dict[str, Any] | None:
    """``status``'s options as the click command would read them, or None to let click parse."""
    if not args or args[0] != "status":
        return None
    values: dict[str, Any] = {
        "site": os.environ.get("SITEBOOT_SITE") or None,
        "env": os.environ.get("SITEBOOT_ENV") or DEFAULT_ENV,
        "root": os.environ.get("SITEBOOT_ROOT") or None,
        "all_envs": False, "as_json": False,
    }
    names: list[str] = []
    instances: list[str] = []
    rest = list(args[1:])
    while rest:
        arg = rest.pop(0)
        name, equals, value = arg.partition("=")
        if arg in _STATUS_FLAGS:
            values[_STATUS_FLAGS[arg]] = True
            continue
        if equals and name.startswith("--") and name in _STATUS_VALUES:
            key = _STATUS_VALUES[name]
        elif arg in _STATUS_VALUES and rest and not rest[0].startswith("-"):
            key, value = _STATUS_VALUES[arg], rest.pop(0)
        elif not arg.startswith("-"):
            names.append(arg)
            continue
        else:
            return None
        if key == "instance":
            instances.append(value)
        else:
            values[key] = value
    return {**values, "names": tuple(names), "instance": tuple(instances)}
