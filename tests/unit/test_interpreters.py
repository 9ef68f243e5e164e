"""Which interpreter built a venv: recorded, and found moved or gone with stat alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from siteboot import control, statusreport
from siteboot.bootstrap import locate, stamp
from siteboot.errors import STATUS_OK, STATUS_WARNING
from siteboot.interpreters import APP_VENV_STAMP, RECORD_KEY, built_with, moved, stamped_moved
from tests.helpers import plan_from


def fake_interpreter(folder: Path, version: str = "3.11") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    python = folder / f"python{version}"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    return python


def fake_venv(venv: Path, python: Path) -> Path:
    """A venv as virtualenv lays it out: bin/python links to the base, pyvenv.cfg names home."""
    (venv / "bin").mkdir(parents=True)
    os.symlink(python, venv / "bin" / "python")
    (venv / "pyvenv.cfg").write_text(f"home = {python.parent}\nversion = 3.11.7\n")
    return venv


@pytest.fixture
def module_python(tmp_path: Path) -> Path:
    """``/opt/python/current -> 3.11.4``, as module trees are laid out."""
    real = fake_interpreter(tmp_path / "opt" / "3.11.4" / "bin")
    os.symlink(real.parent.parent, tmp_path / "opt" / "current")
    return tmp_path / "opt" / "current" / "bin" / real.name


def test_a_healthy_venv_is_not_reported(tmp_path, module_python):
    venv = fake_venv(tmp_path / "venv", module_python)
    recorded = built_with(venv)
    assert recorded == {"executable": str(tmp_path / "opt" / "3.11.4" / "bin" / "python3.11"),
                        "home": str(module_python.parent)}
    assert moved(venv, recorded) is None


def test_an_interpreter_that_moved_is_reported(tmp_path, module_python):
    venv = fake_venv(tmp_path / "venv", module_python)
    recorded = built_with(venv)
    fake_interpreter(tmp_path / "opt" / "3.11.9" / "bin")
    os.unlink(tmp_path / "opt" / "current")  # the module upgrade retargets `current`
    os.symlink(tmp_path / "opt" / "3.11.9", tmp_path / "opt" / "current")
    why = moved(venv, recorded)
    assert why is not None
    assert "3.11.4/bin/python3.11) moved: its bin/python now starts" in why
    assert "3.11.9/bin/python3.11" in why


def test_an_interpreter_that_is_gone_is_reported(tmp_path, module_python):
    venv = fake_venv(tmp_path / "venv", module_python)
    recorded = built_with(venv)
    (tmp_path / "opt" / "3.11.4" / "bin" / "python3.11").unlink()
    assert "3.11.4/bin/python3.11) is gone" in (moved(venv, recorded) or "")
    assert "is gone" in (moved(venv, None) or "")  # a venv from before interpreters were recorded


def test_a_copied_interpreter_moves_with_its_venv_and_is_checked_by_its_home(tmp_path):
    base = fake_interpreter(tmp_path / "base" / "bin")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_bytes(base.read_bytes())
    (venv / "pyvenv.cfg").write_text(f"home = {base.parent}\n")
    recorded = built_with(venv)
    assert recorded["executable"] is None
    assert moved(venv, recorded) is None
    os.rename(venv, tmp_path / "moved-venv")
    assert moved(tmp_path / "moved-venv", recorded) is None
    base.unlink()
    (tmp_path / "base" / "bin").rmdir()
    assert "is gone" in (moved(tmp_path / "moved-venv", recorded) or "")


def test_stamped_moved_reads_the_stamp_and_skips_what_is_not_built(tmp_path, module_python):
    venv = fake_venv(tmp_path / "venv", module_python)
    assert stamped_moved(venv, APP_VENV_STAMP) is None  # no stamp: half-built, not our concern
    (venv / APP_VENV_STAMP).write_text(json.dumps({RECORD_KEY: built_with(venv)}))
    assert stamped_moved(venv, APP_VENV_STAMP) is None
    (tmp_path / "opt" / "3.11.4" / "bin" / "python3.11").unlink()
    assert "is gone" in (stamped_moved(venv, APP_VENV_STAMP) or "")


def test_the_tool_venv_is_not_current_once_its_interpreter_moved(tmp_path, module_python,
                                                                 monkeypatch):
    venv = fake_venv(tmp_path / "tool", module_python)
    stamp.write_stamp(venv, ["click"], "1.0", "3.11.7", tmp_path)
    found = stamp.read_stamp(venv)[RECORD_KEY]
    assert isinstance(found, dict)
    assert found["executable"].endswith("3.11.4/bin/python3.11")
    assert stamp.stamp_matches(venv, tmp_path, ["click"], "1.0", lambda v: "3.11.7")
    os.unlink(tmp_path / "opt" / "current")
    os.symlink(fake_interpreter(tmp_path / "opt" / "3.11.9" / "bin").parent.parent,
               tmp_path / "opt" / "current")
    assert not stamp.stamp_matches(venv, tmp_path, ["click"], "1.0", lambda v: "3.11.7")
    assert "moved" in (stamp.interpreter_moved(venv) or "")


SITE = """
    [site]
    name = "t"
    envs = ["dev"]
    runtime_dir = "{folder}/run"
    state_dir = "{folder}/state"
    venv_dir = "{folder}/venvs"

    [instances.main]
    port = {{ dev = 40001 }}

    [venvs.app]
    requirements = []

    [programs.web]
    instance = "main"
    venv = "app"
    command = "{{venv}}/bin/python -m http.server"

    [programs.worker]
    instance = "main"
    venv = "app"
    command = "{{venv}}/bin/python -m worker"
    """


def test_status_warns_of_a_venv_whose_interpreter_moved(tmp_path, module_python, monkeypatch):
    plan = plan_from(SITE.format(folder=tmp_path), tmp_path)
    monkeypatch.setattr(locate, "find_checkout", lambda: None)
    monkeypatch.setattr(control, "_query", lambda plan, inst: statusreport.InstanceStatus(
        inst.name, inst.user, statusreport.RUNNING, "u"))
    build = fake_venv(tmp_path / "venvs" / ".app-0123456789ab", module_python)
    (build / APP_VENV_STAMP).write_text(json.dumps({RECORD_KEY: built_with(build)}))
    os.symlink(build.name, tmp_path / "venvs" / "app")
    assert control.status(plan).exit_code == STATUS_OK
    (tmp_path / "opt" / "3.11.4" / "bin" / "python3.11").unlink()
    report = control.status(plan)
    assert report.exit_code == STATUS_WARNING
    [problem] = report.as_json()["venv_problems"]
    assert problem["venv"] == str(tmp_path / "venvs" / "app")
    assert problem["programs"] == ["web", "worker"]
    assert "is gone" in problem["problem"]
    assert problem["problem"].endswith("`siteboot init` rebuilds it")


def test_status_warns_of_the_tool_venv_too(tmp_path, module_python, monkeypatch):
    plan = plan_from(SITE.format(folder=tmp_path), tmp_path)
    monkeypatch.setattr(control, "_query", lambda plan, inst: statusreport.InstanceStatus(
        inst.name, inst.user, statusreport.RUNNING, "u"))
    tool = fake_venv(tmp_path / "tool", module_python)
    stamp.write_stamp(tool, [], "1.0", "3.11.7", tmp_path)
    monkeypatch.setattr(locate, "find_checkout", lambda: tmp_path)
    monkeypatch.setenv(locate.ENV_VENV, str(tool))
    assert control.status(plan).venv_problems == []
    (tmp_path / "opt" / "3.11.4" / "bin" / "python3.11").unlink()
    [problem] = control.status(plan).venv_problems
    assert (problem.venv, problem.programs) == (str(tool), [])
    assert problem.problem.startswith("the tool venv: the interpreter it was built with")
