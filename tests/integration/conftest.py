"""Real supervisord instances in short temp dirs on free ports, always cleaned up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import SITEBOOT, free_ports, kill_all, processes_under


@dataclass
class SiteUnderTest:
    base: Path
    path: Path
    env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)

    def run(self, *args: str, check: bool = False, timeout: float = 120,
            user: str | None = None, extra_env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        cmd = [*SITEBOOT, *args]
        env = dict(self.env, **(extra_env or {}))
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def status(self, *args: str) -> tuple[int, dict[str, Any]]:
        result = self.run("status", "--json", *args)
        return result.returncode, json.loads(result.stdout)

    def wait_status(self, code: int, *args: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            rc, data = self.status(*args)
            if rc == code or time.monotonic() > deadline:
                assert rc == code, data
                return data
            time.sleep(0.2)

    def runtime(self, instance: str) -> Path:
        return self.base / "run" / instance

    def state(self) -> Path:
        return self.base / "state"


DEFAULT_PROGRAMS = """
[programs.web]
instance = "alpha"
command = "{python} -m siteboot.demo serve --port {port}"
port = { dev = PORT_WEB }
startsecs = 1

[programs.worker]
instance = "beta"
command = "{python} -m siteboot.demo work --interval 0.5"
numprocs = 2
startsecs = 1
stopwaitsecs = 5
"""


@pytest.fixture
def site_factory() -> Iterator[Any]:
    """Make sites with instances ``alpha`` and ``beta``; everything they start is stopped."""
    made: list[SiteUnderTest] = []

    def make(programs: str = DEFAULT_PROGRAMS, extra_site: str = "",
             auto_ports: bool = False) -> SiteUnderTest:
        """``auto_ports``: the instances' ports are "auto" (PORT_WEB can be too)."""
        base = Path(tempfile.mkdtemp(prefix="sb-", dir="/tmp"))
        alpha, beta, web, spare = free_ports(4)

        def port(number: int) -> str:
            return '"auto"' if auto_ports else f"{{ dev = {number} }}"

        text = textwrap.dedent(f"""
            [site]
            name = "it"
            envs = ["dev"]
            runtime_dir = "{base}/run"
            state_dir = "{base}/state"
            {extra_site}

            [instances.alpha]
            port = {port(alpha)}

            [instances.beta]
            port = {port(beta)}
            """) + textwrap.dedent(programs).replace("PORT_WEB", str(web)) \
            .replace("PORT_SPARE", str(spare))
        path = base / "it.toml"
        path.write_text(text)
        env = dict(os.environ, HOME=str(base / "home"), SITEBOOT_SITE=str(path),
                   SITEBOOT_ENV="dev", NO_COLOR="1")
        env.pop("SITEBOOT_DEBUG", None)
        site = SiteUnderTest(base, path, env, {"alpha": alpha, "beta": beta, "web": web,
                                               "spare": spare})
        made.append(site)
        return site

    yield make
    for site in made:
        site.run("down", timeout=60)
        leftovers = processes_under(site.base)
        kill_all(leftovers)
        shutil.rmtree(site.base, ignore_errors=True)
        assert not leftovers, f"processes left running under {site.base}: {leftovers}"
