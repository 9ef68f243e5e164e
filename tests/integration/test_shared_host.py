"""Any number of accounts on one host run the quick start (issue 9).

Two real accounts (useradd), each with a fresh clone of its own, run the README's quick start
`python3 -m siteboot init --env dev` of the shipped `local` site, one while the other's is up:
both come up, on different (auto) ports. The timings of each first and second `init` are
printed (run with `-s` to see them).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import REPO, SYSTEM_PYTHON

pytestmark = [pytest.mark.slow, pytest.mark.users]

ACCOUNTS = ("sbt_p9a", "sbt_p9b")


def _drop(user: str) -> None:
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return
    for proc in psutil.process_iter(["uids"]):
        if proc.info["uids"] and proc.info["uids"].real == uid:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    subprocess.run(["userdel", "-r", "-f", user], capture_output=True, check=False)
    subprocess.run(["groupdel", user], capture_output=True, check=False)


def _runtime_dirs(user: str) -> list[Path]:
    return list(Path("/tmp").glob(f"siteboot-{user}-local-*"))


@pytest.fixture
def accounts() -> Iterator[dict[str, Path]]:
    """Each account with a fresh clone of its own (user -> clone); all gone afterwards."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("needs root, useradd and /usr/bin/python3")
    clones: dict[str, Path] = {}
    try:
        for user in ACCOUNTS:
            _drop(user)
            subprocess.run(["useradd", "-m", "-U", "-s", "/bin/sh", user], check=True,
                           capture_output=True)
            home = Path(pwd.getpwnam(user).pw_dir)
            clone = home / "siteboot"
            clone.mkdir()
            for folder in ("siteboot", "templates", "sites"):
                shutil.copytree(REPO / folder, clone / folder,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            for name in ("setup.cfg", "pyproject.toml", "README.md"):
                shutil.copy2(REPO / name, clone / name)
            subprocess.run(["chown", "-R", f"{user}:{user}", str(home)], check=True)
            clones[user] = clone
        yield clones
    finally:
        for user, clone in clones.items():
            if (clone / ".venv").exists():
                siteboot(user, clone, "down", "--purge")
        for user in ACCOUNTS:
            _drop(user)
            for runtime in _runtime_dirs(user):
                shutil.rmtree(runtime, ignore_errors=True)


def siteboot(user: str, clone: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`python3 -m siteboot ARGS` as ``user`` logs in and types it in its clone."""
    home = pwd.getpwnam(user).pw_dir
    environ = [f"{k}={v}" for k, v in os.environ.items() if k.startswith("PIP_")]  # this host's
    command = ["runuser", "-u", user, "--", "env", "-i", f"HOME={home}", f"USER={user}",
               f"LOGNAME={user}", "PATH=/usr/local/bin:/usr/bin:/bin", "NO_COLOR=1", *environ,
               SYSTEM_PYTHON, "-m", "siteboot", *args]
    started = time.monotonic()
    result = subprocess.run(command, cwd=clone, capture_output=True, text=True, timeout=600,
                            check=False)
    return result, time.monotonic() - started


def dev_ports(user: str, clone: Path) -> dict[str, int]:
    result, _ = siteboot(user, clone, "ports", "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return {name: by_env["dev"] for name, by_env in data["ports"].items()}


def test_two_accounts_run_the_quick_start_side_by_side(accounts):
    first, second = ACCOUNTS
    timings = {}
    up: dict[str, dict[str, int]] = {}
    for user in (first, second):  # the second while the first's is up
        clone = accounts[user]
        initial, timings[f"{user} first init"] = siteboot(user, clone, "init", "--env", "dev")
        assert initial.returncode == 0, initial.stdout + initial.stderr
        assert "services: started" in initial.stdout
        assert "workers: started" in initial.stdout
        assert initial.stdout.count("RUNNING") == 3, initial.stdout
        again, timings[f"{user} second init"] = siteboot(user, clone, "init", "--env", "dev")
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("already running: nothing to do") == 2
        up[user] = dev_ports(user, clone)
        assert None not in up[user].values()
    print("\n" + "\n".join(f"{what}: {seconds:.1f} s" for what, seconds in timings.items()))

    assert not set(up[first].values()) & set(up[second].values()), up
    for user in (first, second):
        status, _ = siteboot(user, accounts[user], "status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert all(i["user"] == user for i in json.loads(status.stdout)["instances"])
        with urllib.request.urlopen(f"http://127.0.0.1:{up[user]['web']}/health",
                                    timeout=30) as answer:
            assert json.loads(answer.read())["env"] == "dev"
    for user in (first, second):
        down, _ = siteboot(user, accounts[user], "down")
        assert down.returncode == 0, down.stderr
        uid = pwd.getpwnam(user).pw_uid
        left = [p.pid for p in psutil.process_iter(["uids"])
                if p.info["uids"] and p.info["uids"].real == uid]
        assert left == []
