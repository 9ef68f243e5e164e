"""Real virtualenvs: built with virtualenv's API, pip installing through the stable symlink."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from siteboot.errors import BootstrapError
from siteboot.plan import Plan, make_plan
from siteboot.site import load_site
from siteboot.venvs import ensure_venvs, read_stamp

pytestmark = pytest.mark.slow

SITE = """
[site]
name = "t"
venv_dir = "{venv_dir}"

[instances.main]
port = {{ dev = 40001, staging = 40002, prod = 40003 }}

[venvs.app]
requirements = {requirements}

[programs.web]
instance = "main"
venv = "app"
command = "{{venv}}/bin/python -m http.server {{port}}"
port = {{ dev = 41001, staging = 41002, prod = 41003 }}
"""


def plan_for(write_site, tmp_path: Path, requirements: list[str]) -> Plan:
    text = SITE.format(venv_dir=tmp_path / "venvs", requirements=repr(requirements).replace("'", '"'))
    return make_plan(load_site(write_site(text)), "dev")


def python_of(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          check=False)


def test_empty_requirements(write_site, tmp_path):
    plan = plan_for(write_site, tmp_path, [])
    [result] = ensure_venvs(plan)
    venv = tmp_path / "venvs" / "app"
    assert result.path == venv
    assert result.action == "created"
    assert venv.is_symlink()
    probe = python_of(venv, "import sys; print(sys.prefix != sys.base_prefix)")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "True"
    assert (venv / "bin" / "pip").exists()  # seeded, for whoever wants to look inside


def test_requirement_upgrade_and_failed_install(write_site, tmp_path):
    venv = tmp_path / "venvs" / "app"
    [result] = ensure_venvs(plan_for(write_site, tmp_path, ["six"]))
    assert result.action == "created"
    probe = python_of(venv, "import six; print(six.__name__)")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "six"
    target = os.readlink(venv)

    started = time.monotonic()
    [again] = ensure_venvs(plan_for(write_site, tmp_path, ["six"]))
    assert again.action == "up to date"
    assert time.monotonic() - started < 2.0
    assert again.seconds < 2.0
    assert os.readlink(venv) == target

    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    plan = plan_for(write_site, tmp_path, ["six", "siteboot-no-such-package-xyz==9.9"])
    with pytest.raises(BootstrapError) as info:
        ensure_venvs(plan, wheelhouse=empty)
    message = str(info.value)
    assert "venv 'app': pip install failed" in message
    assert "siteboot-no-such-package-xyz" in message
    assert f"still points at the previous venv ({target})" in message
    assert len(message.splitlines()) < 25
    assert os.readlink(venv) == target
    assert {p.name for p in venv.parent.iterdir() if p.name.startswith(".app-")} == {target}
    probe = python_of(venv, "import six")
    assert probe.returncode == 0, probe.stderr
    stamp = read_stamp(venv)
    assert stamp is not None
    assert stamp["requirements"] == ["six"]


def test_swap_keeps_the_previous_build_usable(write_site, tmp_path):
    venv = tmp_path / "venvs" / "app"
    ensure_venvs(plan_for(write_site, tmp_path, []))
    first = venv.parent / os.readlink(venv)
    [result] = ensure_venvs(plan_for(write_site, tmp_path, ["six"]))
    assert result.action == "updated"
    assert os.readlink(venv) != first.name
    # A program started before the swap runs from the previous build, which is still whole.
    assert python_of(first, "import sys").returncode == 0
    assert python_of(venv, "import six").returncode == 0
