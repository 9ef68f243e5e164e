"""The command line: parse, call the core, print a table or JSON. No logic lives here.

Heavy modules (jinja2, virtualenv, psutil, supervisor) are imported inside the commands that
need them, so ``siteboot status`` starts fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from siteboot import __version__
from siteboot.errors import EXIT_FAILED, EXIT_USAGE, SitebootError
from siteboot.resources import DEFAULT_ENV, DEFAULT_SITE

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    """What every command gets: the chosen site, env and root, resolved lazily."""

    def __init__(self, site: str, env: str, root: str | None) -> None:
        self.site_arg = site
        self.env = env
        self.root_arg = root

    @property
    def root(self) -> Path | None:
        from siteboot.resources import find_root

        return find_root(self.root_arg)

    def site_path(self) -> Path:
        from siteboot.resources import resolve_site_path

        return resolve_site_path(self.site_arg, self.root)

    def site(self) -> Any:
        from siteboot.site import load_site

        return load_site(self.site_path())

    def plan(self) -> Any:
        from siteboot.plan import make_plan

        return make_plan(self.site(), self.env)


def site_options(func: F) -> F:
    """--site/--env/--root on a command (also read from SITEBOOT_SITE/SITEBOOT_ENV/SITEBOOT_ROOT)."""
    func = click.option("--root", envvar="SITEBOOT_ROOT", metavar="DIR",
                        help="Folder holding sites/ and templates/ [default: nearest above cwd].")(func)
    func = click.option("--env", "-e", envvar="SITEBOOT_ENV", default=DEFAULT_ENV,
                        show_default=True, help="Environment (one of the site's envs).")(func)
    func = click.option("--site", "-s", envvar="SITEBOOT_SITE", default=DEFAULT_SITE,
                        show_default=True, help="Site name under sites/, or a path to a .toml.")(func)
    return func


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def _color() -> bool | None:
    return False if os.environ.get("NO_COLOR") else None


def echo(text: str = "", err: bool = False) -> None:
    click.echo(text, err=err, color=_color())


def styled(text: str, **style: Any) -> str:
    if os.environ.get("NO_COLOR"):
        return text
    return click.style(text, **style)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def table(headers: Sequence[str], rows: list[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _debug() -> bool:
    return os.environ.get("SITEBOOT_DEBUG", "") not in ("", "0")


class SitebootGroup(click.Group):
    """Turns expected failures into one message and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SitebootError as exc:
            if _debug() or (ctx.params.get("debug")):
                raise
            click.echo(styled("error: ", fg="red", bold=True) + str(exc), err=True,
                       color=_color())
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            ctx.exit(130)


@click.group(cls=SitebootGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="siteboot")
@click.option("--debug", is_flag=True, help="Show tracebacks (also SITEBOOT_DEBUG=1).")
def cli(debug: bool) -> None:
    """Run privilege-separated supervisord instances for a site, without root.

    Shell completion: eval "$(_SITEBOOT_COMPLETE=bash_source siteboot)" (zsh_source, fish_source).
    """


@cli.command()
@site_options
@json_option
def ports(site: str, env: str, root: str | None, as_json: bool) -> None:
    """Print the site's port matrix: one row per program and supervisord, one column per env."""
    from siteboot.ports import matrix

    model = Ctx(site, env, root).site()
    rows = matrix(model)
    if as_json:
        print_json({"site": model.name, "envs": model.envs, "ports": rows})
        return
    echo(table(["name", *model.envs], [[name, *(ports_.get(e) for e in model.envs)]
                                       for name, ports_ in rows.items()]))


@cli.command()
@site_options
@click.option("--all", "all_sites", is_flag=True, help="Check every site under sites/, and "
              "clashes between them.")
@click.option("--strict", is_flag=True, help="A port in use on this host is an error, not a warning.")
@json_option
def check(site: str, env: str, root: str | None, all_sites: bool, strict: bool,
          as_json: bool) -> None:
    """Validate site files and the port matrix; report every problem at once."""
    from siteboot.ports import check as run_check
    from siteboot.resources import all_site_paths

    ctx = Ctx(site, env, root)
    paths = all_site_paths(ctx.root) if all_sites else [ctx.site_path()]
    report = run_check(paths, strict=strict)
    if as_json:
        print_json(report.as_json())
    else:
        for problem in report.problems:
            color = "red" if problem.level == "error" else "yellow"
            echo(styled(str(problem), fg=color), err=True)
        verdict = "ok" if not report.errors else f"{len(report.errors)} error(s)"
        echo(f"checked {len(paths)} site file(s): {verdict}"
             + (f", {len(report.warnings)} warning(s)" if report.warnings else ""))
    if report.errors:
        sys.exit(EXIT_USAGE)


@cli.command()
@site_options
@click.option("--instance", "-i", metavar="NAME", help="Only this instance.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write previews here (placeholder key hash) instead of the runtime dirs.")
@json_option
def render(site: str, env: str, root: str | None, instance: str | None, out: Path | None,
           as_json: bool) -> None:
    """Render one supervisord config per instance from templates/."""
    from siteboot.render import render_configs

    ctx = Ctx(site, env, root)
    result = render_configs(ctx.plan(), ctx.root, out, instance)
    if as_json:
        print_json({"rendered": [{"instance": r.instance, "path": str(r.path),
                                  "preview": r.preview} for r in result.rendered],
                    "skipped": [{"instance": i, "reason": why} for i, why in result.skipped]})
        return
    for item in result.rendered:
        note = "  (preview: placeholder key hash, not startable as is)" if item.preview else ""
        echo(f"wrote {item.path}{note}")
    for name, why in result.skipped:
        echo(f"skipped {name}: {why}")


def main() -> None:
    """Console entry point."""
    try:
        cli(prog_name="siteboot")
    except Exception as exc:  # a bug, not bad input: keep it short unless asked
        if _debug() or "--debug" in sys.argv:
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc}\n"
                   "  rerun with --debug (or SITEBOOT_DEBUG=1) for the traceback", err=True)
        sys.exit(EXIT_FAILED)
