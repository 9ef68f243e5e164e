"""App venvs from the checkout, with real virtualenvs, pip and supervisord: new code is a new
build, and `init` restarts the programs on it and says so; an interpreter that moved (a module
upgrade) is reported by `status` and `doctor` and rebuilt by `init`."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.slow

PACKAGE = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "tinypkg"
        version = "1.0"
        """,
    "tinypkg/__init__.py": "CODE = 1\n",
    "tinypkg/__main__.py": """
        import os, sys, time
        from tinypkg import CODE
        with open(sys.argv[1], "w") as out:
            out.write(f"{CODE} {os.getpid()} {os.path.realpath(sys.prefix)}")
        while True:
            time.sleep(1)
        """,
}

PROGRAMS = """
    [venvs.app]
    requirements = ["./tinypkg"]
    {python}

    [programs.web]
    instance = "alpha"
    venv = "app"
    command = "{{venv}}/bin/python -m tinypkg {out}"
    startsecs = 1
    """


def write_package(folder: Path) -> None:
    for name, text in PACKAGE.items():
        path = folder / "tinypkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def web(site: Any) -> dict[str, Any]:
    _, data = site.status()
    return dict(data["instances"][0]["programs"][0])


def running_code(out: Path, pid: int) -> str:
    """What the process ``pid`` wrote at its start: its CODE and the venv it runs in."""
    def written() -> str | None:
        text = out.read_text() if out.exists() else ""
        return text if text.split(" ")[1:2] == [str(pid)] else None

    found: str = wait_until(written, timeout=60)
    return found


def test_new_code_is_a_new_build_and_its_programs_restart(site_factory):
    site = site_factory("")
    out = site.base / "web.out"
    site.path.write_text(site.path.read_text() + textwrap.dedent(
        PROGRAMS.format(python="", out=out)))
    write_package(site.base)

    first = site.run("init", timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "venv app: created" in first.stdout
    before = web(site)
    assert before["state"] == "RUNNING"
    code, _, prefix = running_code(out, before["pid"]).split(" ")
    assert code == "1"
    assert Path(prefix).name.startswith(".app-")  # the build itself, through the stable link
    assert not (site.base / "tinypkg" / "build").exists()  # the build wrote nothing here

    same = site.run("init", timeout=600)
    assert "venv app: up to date" in same.stdout, same.stdout
    assert web(site)["pid"] == before["pid"]  # the same code: nothing restarted

    (site.base / "tinypkg" / "tinypkg" / "__init__.py").write_text("CODE = 2\n")
    second = site.run("init", timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "venv app: updated" in second.stdout
    assert "alpha: updated" in second.stdout
    assert "web: restarted on venv app's new build .app-" in second.stdout, second.stdout
    after = web(site)
    assert after["state"] == "RUNNING"
    assert after["pid"] != before["pid"]
    code, _, new_prefix = running_code(out, after["pid"]).split(" ")
    assert code == "2"  # the new code runs, from the new build
    assert new_prefix != prefix
    assert Path(prefix).is_dir()  # the previous build stays, for a way back


def module_python(base: Path, version: str) -> Path:
    """A copy of this interpreter where a module system would put it."""
    real = Path(os.path.realpath(sys.executable))
    folder = base / "modules" / "python" / version / "bin"
    folder.mkdir(parents=True)
    shutil.copy2(real, folder / real.name)
    return folder / real.name


def test_a_module_upgrade_is_reported_then_rebuilt(site_factory):
    site = site_factory("")
    out = site.base / "web.out"
    first_python = module_python(site.base, "3.11.4")
    current = site.base / "modules" / "python" / "current"
    os.symlink("3.11.4", current)
    site.path.write_text(site.path.read_text() + textwrap.dedent(PROGRAMS.format(
        python=f'python = "{current}/bin/{first_python.name}"', out=out)))
    write_package(site.base)
    first = site.run("init", timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    before = web(site)

    # the module is upgraded: `current` moves on, the old version is removed
    module_python(site.base, "3.11.9")
    os.unlink(current)
    os.symlink("3.11.9", current)
    shutil.rmtree(site.base / "modules" / "python" / "3.11.4")

    rc, data = site.status()
    assert rc == 1, data
    [problem] = data["venv_problems"]
    assert problem["programs"] == ["web"]
    assert "`siteboot init` rebuilds it" in problem["problem"]
    doctor = site.run("doctor")
    assert doctor.returncode == 1
    assert "app venv" in doctor.stdout
    assert "init" in doctor.stdout

    again = site.run("init", timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "venv app: updated" in again.stdout
    assert "web: restarted on venv app's new build" in again.stdout
    after = web(site)
    assert after["pid"] != before["pid"]
    running_code(out, after["pid"])
    rc, data = site.status()
    assert rc == 0, data
    assert "venv_problems" not in data
