"""Shared fixtures: site files in tmp dirs, supervisor's own parser."""

from __future__ import annotations

import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parent.parent

MINIMAL_SITE = """
[site]
name = "t"

[instances.main]
port = { dev = 40001, staging = 40002, prod = 40003 }

[programs.web]
instance = "main"
command = "python3 -m http.server {port}"
port = { dev = 41001, staging = 41002, prod = 41003 }
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short path under /tmp: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="sb-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def own_site_text(short_dir: Path, runtime: str = "", extra: str = "") -> str:
    """A site whose `main` instance belongs to the invoker, with every path under short_dir."""
    return f"""
        [site]
        name = "t"
        runtime_dir = "{runtime or f'{short_dir}/rt-{{env}}'}"
        state_dir = "{short_dir}/st/{{site}}-{{env}}"

        [instances.main]
        port = {{ dev = 40001, staging = 40002, prod = 40003 }}

        [programs.web]
        instance = "main"
        command = "python3 -m http.server {{port}}"
        port = {{ dev = 41001, staging = 41002, prod = 41003 }}
        {extra}
        """


def plan_from(text: str, folder: Path, env: str = "dev") -> Any:
    """Write ``text`` (dedented) as ``folder/t.toml`` and resolve it for ``env``."""
    from siteboot.plan import make_plan
    from siteboot.site import load_site

    path = folder / "t.toml"
    path.write_text(textwrap.dedent(text))
    return make_plan(load_site(path), env)


@pytest.fixture
def write_site(tmp_path: Path) -> Callable[..., Path]:
    """Write a site file (dedented) and return its path."""

    def write(text: str = MINIMAL_SITE, name: str = "t") -> Path:
        folder = tmp_path / "sites"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


def supervisor_parse(path: Path) -> Any:
    """Parse a rendered config with supervisor's own options classes.

    Directory existence checks are switched off: a preview names runtime dirs that do not
    exist on the test machine, and the grammar is what is under test.
    """
    from supervisor import datatypes, options

    saved = (datatypes.existing_dirpath, datatypes.existing_directory,
             options.existing_dirpath, options.existing_directory)
    datatypes.existing_dirpath = options.existing_dirpath = lambda v: v
    datatypes.existing_directory = options.existing_directory = lambda v: v
    try:
        opts = options.ServerOptions()
        opts.configfile = str(path)
        opts.process_config(do_usage=False)
        return opts
    finally:
        (datatypes.existing_dirpath, datatypes.existing_directory,
         options.existing_dirpath, options.existing_directory) = saved
