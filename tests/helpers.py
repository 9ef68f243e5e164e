"""Helpers shared by the test layers and the benchmarks (fixtures stay in the conftests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
# A stand-in for gitlab-runner (a real one cannot be installed here): see its docstring.
STAND_IN_RUNNER = REPO / "tests" / "fixtures" / "gitlab-runner"
# The CLI in a fresh interpreter of the test venv (no stage 0: the test venv has the dependencies).
SITEBOOT = [sys.executable, "-c", "from siteboot.cli import main; main()"]

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


def runner_site_text(folder: Path, runner: str, instance: str = "", extra: str = "") -> str:
    """A site with one instance, ``main`` (env dev, every path under ``folder``), and a
    ``[runner]`` table whose keys are ``runner``."""
    return textwrap.dedent(f"""
        [site]
        name = "t"
        envs = ["dev"]
        runtime_dir = "{folder}/run"
        state_dir = "{folder}/state"

        [instances.main]
        port = {{ dev = 40001 }}
        {instance}

        [runner]
        """) + textwrap.dedent(runner) + textwrap.dedent(extra)


def invoke_cli(*args: object) -> Any:
    """The click CLI in this process (a ``click.testing.Result``); never a traceback."""
    from click.testing import CliRunner

    from siteboot.cli.commands import cli

    result = CliRunner(mix_stderr=False).invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.stdout + result.stderr
    # expected failures end in SystemExit with a code; anything else is a bug
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def plan_from(text: str, folder: Path, env: str = "dev") -> Any:
    """Write ``text`` (dedented) as ``folder/t.toml`` and resolve it for ``env``."""
    from siteboot.plan import make_plan
    from siteboot.site import load_site

    path = folder / "t.toml"
    path.write_text(textwrap.dedent(text))
    return make_plan(load_site(path), env)


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


def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def processes_under(base: Path) -> list[int]:
    """Pids whose command line mentions ``base``: what a test may have left running."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(base) in part for part in proc.info["cmdline"] or []):
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return [p for p in found if p != os.getpid()]


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def supervisords(base: Path) -> list[int]:
    """Pids of the supervisords whose command line mentions ``base``."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any("supervisord" in part for part in cmdline[:4]) and any(str(base) in p for p in cmdline):
            pids.append(proc.pid)
    return pids


def children_of(pid: int, count: int = 1, timeout: float = 5.0) -> list[Any]:
    """At least ``count`` descendants of ``pid`` (psutil processes), waiting up to ``timeout``."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            found = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{pid} has children {found}"
            return found
        time.sleep(0.01)


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    """The first true value of ``predicate()``, polled until ``timeout`` (then an AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            assert value, f"timed out after {timeout:g} s"
            return value
        time.sleep(0.05)


def dead_pid() -> int:
    """A pid that was just used and is free again."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
