"""The command line. ``main`` is the console entry point.

``status`` and ``init`` are answered by ``siteboot.cli.fast`` without importing click (a warm
``init`` is run as often, by cron and CI, and is hardly more than a status); everything else goes to
the click commands in ``siteboot.cli.commands``, which own the CLI. ``context`` resolves the
site, env and root a command is given; ``output`` prints tables, colours and JSON.
"""

from __future__ import annotations

import sys

from siteboot.errors import STATUS_UNKNOWN, exit_code_for


def main() -> None:
    """Console entry point: one message and an exit code for expected failures."""
    from siteboot.cli.context import Ctx, debug_enabled, remember_invocation
    from siteboot.cli.fast import parse_init_args, parse_status_args, show_init, show_status
    from siteboot.cli.output import error

    args = sys.argv[1:]
    remember_invocation(args)
    debug = debug_enabled(args)
    fast = None if debug else parse_status_args(args)
    if fast is not None:
        try:
            ctx = Ctx(fast["site"], fast["env"], fast["root"], cached_plans=True)
            code = show_status(ctx, fast["instance"], fast["as_json"], fast["names"],
                               fast["all_envs"])
        except BaseException as exc:  # a bug too is a verdict a monitor reads: "unknown"
            code = exit_code_for(exc, debug=debug, error=error, internal_code=STATUS_UNKNOWN,
                                 broken_pipe_code=STATUS_UNKNOWN)
        sys.exit(code)
    fast_init = None if debug else parse_init_args(args)
    if fast_init is not None:
        try:
            code = show_init(Ctx(fast_init["site"], fast_init["env"], fast_init["root"]),
                             fast_init["wheelhouse"], fast_init["timeout"], fast_init["no_start"],
                             fast_init["as_json"])
        except BaseException as exc:  # as the click command's group reports it
            code = exit_code_for(exc, debug=debug, error=error)
        sys.exit(code)
    from siteboot.cli.commands import cli

    try:
        cli(prog_name="siteboot")
    except BaseException as exc:
        sys.exit(exit_code_for(exc, debug=debug, error=error))
