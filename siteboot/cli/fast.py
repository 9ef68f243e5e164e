"""``siteboot status`` without click.

It is what monitoring runs every minute and operators type most: it is parsed here, with a short
parser for exactly the options the click command ``status`` has (a test checks both read the same),
so it never pays for importing click (a third of its run time). Anything this parser does not
recognise (``--help``, a typo, a bundled flag) is left to click.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from siteboot.cli.context import Ctx
from siteboot.errors import STATUS_UNKNOWN, SitebootError, silence_output
from siteboot.resources import DEFAULT_ENV

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from siteboot.statusreport import SiteStatus, StatusResult


def show_status(ctx: Ctx, instance: Sequence[str] = (), as_json: bool = False,
                names: Sequence[str] = (), all_envs: bool = False) -> int:
    """Print the status report; returns its monitoring exit code (3 when there is none).

    The verdict stands when the reader goes away (``siteboot status | head -1``): status exits
    0-3 whatever happens to its output.
    """
    quick = None
    if not names and not all_envs:  # the supervisords answer while siteboot loads
        ctx.send_status_requests(instance)
        quick = ctx.quick_status(instance)
    result: SiteStatus | StatusResult
    try:
        if quick is not None:
            result, reports = quick, [quick]
        else:
            from siteboot import ops

            plan = ctx.plan()
            if all_envs:
                plans = [plan if env == plan.env else ctx.plan_for(env) for env in plan.site.envs]
                site = ops.status_all_envs(plans, plan.env, instance, names)
                result, reports = site, site.reports
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


def show_init(ctx: Ctx, wheelhouse: Path | None = None, timeout: float = 30.0,
              no_start: bool = False, as_json: bool = False) -> int:
    """``init``: print what it did (the click command ``init`` prints through here too);
    returns its exit code."""
    from siteboot import ops
    from siteboot.cli.output import echo, print_json, print_outcomes, print_status
    from siteboot.cli.progress import reporter

    result = ops.init(ctx.plan(), ctx.root, wheelhouse, timeout, progress=reporter(as_json),
                      start=not no_start)
    if as_json:
        print_json(result.as_json())
    else:
        for v in result.venvs:
            build = f" -> {v.build.name}" if v.build else ""
            was = f", was {v.previous.name}" if v.previous and v.previous != v.build else ""
            echo(f"venv {v.name}: {v.action} ({v.path}{build}{was})")
        print_outcomes(result.instances)
        if result.status is None:
            echo("nothing started (--no-start)")
        else:
            echo()
            print_status(result.status)
    return result.exit_code


_SITE_VALUES = {"--site": "site", "-s": "site", "--env": "env", "-e": "env", "--root": "root"}
_STATUS_VALUES = {**_SITE_VALUES, "--instance": "instance", "-i": "instance"}
_STATUS_FLAGS = {"--json": "as_json", "--all-envs": "all_envs"}
_INIT_VALUES = {**_SITE_VALUES, "--wheelhouse": "wheelhouse", "--timeout": "timeout"}
_INIT_FLAGS = {"--json": "as_json", "--no-start": "no_start"}


def parse_status_args(args: Sequence[str]) -> dict[str, Any] | None:
    """``status``'s options as the click command would read them, or None to let click parse."""
    if not args or args[0] != "status":
        return None
    parsed = _parse(args[1:], _STATUS_VALUES, _STATUS_FLAGS, {"all_envs": False, "as_json": False})
    if parsed is None:
        return None
    values, names = parsed
    return {**values, "names": tuple(names)}


def parse_init_args(args: Sequence[str]) -> dict[str, Any] | None:
    """``init``'s options as the click command would read them, or None to let click parse
    (and say what is wrong): a warm ``init`` is a status with checks, and pays for click no
    more than ``status`` does."""
    if not args or args[0] != "init":
        return None
    wheelhouse = os.environ.get("SITEBOOT_WHEELHOUSE") or None
    parsed = _parse(args[1:], _INIT_VALUES, _INIT_FLAGS,
                    {"wheelhouse": wheelhouse, "timeout": "30.0", "no_start": False,
                     "as_json": False})
    if parsed is None:
        return None
    values, names = parsed
    values.pop("instance")
    if names:
        return None
    try:
        values["timeout"] = float(values["timeout"])
    except ValueError:
        return None
    if values["wheelhouse"] is not None:
        if os.path.isfile(values["wheelhouse"]):  # click refuses it, saying why
            return None
        from pathlib import Path

        values["wheelhouse"] = Path(values["wheelhouse"])
    return values


def _parse(args: Sequence[str], options: dict[str, str], flags: dict[str, str],
           defaults: dict[str, Any]) -> tuple[dict[str, Any], list[str]] | None:
    """(values, positional words) of a command's arguments, for exactly the ``options`` (taking
    a value) and ``flags`` its click command has, or None for anything else."""
    values: dict[str, Any] = {
        "site": os.environ.get("SITEBOOT_SITE") or None,
        "env": os.environ.get("SITEBOOT_ENV") or DEFAULT_ENV,
        "root": os.environ.get("SITEBOOT_ROOT") or None,
        **defaults,
    }
    names: list[str] = []
    instances: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        name, equals, value = arg.partition("=")
        if arg in flags:
            values[flags[arg]] = True
            continue
        if equals and name.startswith("--") and name in options:
            key = options[name]
        elif arg in options and rest and not rest[0].startswith("-"):
            key, value = options[arg], rest.pop(0)
        elif not arg.startswith("-"):
            names.append(arg)
            continue
        else:
            return None
        if key == "instance":
            instances.append(value)
        else:
            values[key] = value
    return {**values, "instance": tuple(instances)}, names
