"""siteboot/bootstrap/build.py: building the tool venv, with every subprocess faked."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from siteboot import __main__ as stage0
from siteboot.bootstrap import build, locate, pipsource, requirements, stamp
from siteboot.errors import BootstrapError
from siteboot.proc import RunResult
from tests.unit.bootstrap_fakes import (
    REQUIRES,
    SETUP_CFG,
    FakeRunner,
    fake_make_venv,
    make,
    make_checkout,
    make_isolated_venv,
    make_wheel,
)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return make_checkout(tmp_path)


# --- building, stamps and transactions -----------------------------------------------------------


def test_first_build_installs_everything(checkout: Path) -> None:
    runner = FakeRunner()
    logs: list[str] = []
    python = make(checkout, runner, logs=logs).ensure()
    venv = checkout / ".venv"
    assert python == venv / "bin" / "python"
    ensurepip, pip = runner.pip_calls
    assert ensurepip[1:] == ["-Im", "ensurepip", "--upgrade", "--default-pip"]
    assert pip[1:4] == ["-I", "-m", "pip"]
    assert pip[-3:] == REQUIRES  # markers passed to pip as-is
    assert "--no-index" not in pip
    pth = venv / "lib" / "python3.9" / "site-packages" / "siteboot.pth"
    assert pth.read_text() == f"{checkout}\n"
    launcher = venv / "bin" / "siteboot"
    assert os.access(launcher, os.X_OK)
    assert launcher.read_text() == build.LAUNCHER
    assert make(checkout, FakeRunner()).is_current()
    assert any("creating tool venv" in line for line in logs)


def test_matching_stamp_means_no_pip_call(checkout: Path) -> None:
    make(checkout, FakeRunner()).ensure()
    runner = FakeRunner()
    logs: list[str] = []
    make(checkout, runner, logs=logs).ensure()
    assert runner.pip_calls == []
    assert len(runner.calls) == 1  # the python probe
    assert logs == [f"tool venv up to date ({checkout / '.venv'})"]


def test_wheelhouse_means_no_index(checkout: Path, tmp_path: Path) -> None:
    runner = FakeRunner()
    make(checkout, runner, wheelhouse=tmp_path / "wh").ensure()
    pip = runner.pip_calls[-1]
    at = pip.index("--no-index")
    assert pip[at:at + 3] == ["--no-index", "--find-links", str(tmp_path / "wh")]


def test_failed_first_build_removes_the_half_made_venv(checkout: Path) -> None:
    with pytest.raises(BootstrapError, match=r"click>=8\.0") as info:
        make(checkout, FakeRunner(fail=["click>=8.0"])).ensure()
    assert not (checkout / ".venv").exists()
    assert not (checkout / ".venv.new").exists()
    assert "hint: on a node without network access pass --wheelhouse" in str(info.value)


def test_first_build_happens_at_new_with_a_marker_then_is_renamed(checkout: Path) -> None:
    venv, new = checkout / ".venv", checkout / ".venv.new"
    seen: list[tuple[Path, bool, bool]] = []

    def make_venv(target: Path, prompt: str) -> None:
        seen.append((target, (target / locate.BUILDING_NAME).is_file(), venv.exists()))
        fake_make_venv(target, prompt)

    builder = make(checkout, FakeRunner())
    builder.make_venv = make_venv
    builder.ensure()
    assert seen == [(new, True, False)]  # marked before anything else; the final path untouched
    assert not new.exists()
    assert not (venv / locate.BUILDING_NAME).exists()
    assert read_stamp_python(venv) == "3.9.18"
    assert str(new) not in (venv / "pyvenv.cfg").read_text()
    assert (venv / "bin" / "pip").read_text().startswith(f"#!{venv}/bin/python\n")
    assert make(checkout, FakeRunner()).is_current()


def read_stamp_python(venv: Path) -> object:
    return stamp.read_stamp(venv).get("python")


class Killed(BaseException):
    """Stands for SIGKILL: nothing of siteboot's clean-up runs."""


def test_a_killed_first_build_is_cleaned_up_by_the_next_init(checkout: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    venv, new = checkout / ".venv", checkout / ".venv.new"

    def killed_runner(cmd: Sequence[str]) -> RunResult:
        if "pip" in cmd:
            raise Killed()
        return FakeRunner()(cmd)

    with monkeypatch.context() as patched:
        patched.setattr(build, "_remove", lambda path: None)  # a killed process cleans nothing
        with pytest.raises(Killed):
            make(checkout, killed_runner).ensure()  # type: ignore[arg-type]
    assert not os.path.lexists(venv)  # never a stamp-less venv at the final path
    assert (new / locate.BUILDING_NAME).is_file()
    assert not (new / locate.STAMP_NAME).exists()
    logs: list[str] = []
    make(checkout, FakeRunner(), logs=logs).ensure()
    assert f"removing leftover {new}" in logs
    assert not new.exists()
    assert make(checkout, FakeRunner()).is_current()


@pytest.mark.parametrize("suffix", [".new", ".old"])
@pytest.mark.parametrize("upgrade", [False, True])
def test_leftovers_siteboot_did_not_make_are_not_removed(checkout: Path, suffix: str,
                                                         upgrade: bool) -> None:
    venv = checkout / ".venv"
    if upgrade:
        make(checkout, FakeRunner()).ensure()
        (checkout / "setup.cfg").write_text(SETUP_CFG.replace("click>=8.0", "click>=8.1"))
    leftover = checkout / f".venv{suffix}"
    leftover.mkdir()
    (leftover / "precious").write_text("mine")
    runner = FakeRunner()
    with pytest.raises(BootstrapError) as info:
        make(checkout, runner).ensure()
    assert f"{leftover} is in the way, and `python3 -m siteboot init` did not make it" \
        in info.value.message
    assert "refusing to remove it" in info.value.message
    assert (leftover / "precious").read_text() == "mine"
    assert runner.pip_calls == []
    assert os.path.lexists(venv) is upgrade


def test_a_leftover_symlink_or_file_is_not_removed(checkout: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / locate.BUILDING_NAME).write_text("")  # even one that looks like ours
    (checkout / ".venv.new").symlink_to(target)
    (checkout / ".venv.old").write_text("a file")
    with pytest.raises(BootstrapError, match="is in the way"):
        make(checkout, FakeRunner()).ensure()
    assert (checkout / ".venv.new").is_symlink()
    (checkout / ".venv.new").unlink()
    with pytest.raises(BootstrapError, match=r"\.venv\.old is in the way"):
        make(checkout, FakeRunner()).ensure()
    assert (checkout / ".venv.old").read_text() == "a file"


def test_stamped_leftovers_are_removed(checkout: Path) -> None:
    make(checkout, FakeRunner()).ensure()
    old = checkout / ".venv.old"
    os.rename(checkout / ".venv", old)  # as after a swap killed between its two renames
    logs: list[str] = []
    make(checkout, FakeRunner(), logs=logs).ensure()
    assert f"removing leftover {old}" in logs
    assert not old.exists()
    assert make(checkout, FakeRunner()).is_current()


def test_a_half_built_venv_at_the_final_path_is_rebuilt(checkout: Path) -> None:
    """A first build killed half-way, as siteboot used to make them: marker, no stamp."""
    venv = checkout / ".venv"
    fake_make_venv(venv, ".venv")
    (venv / locate.BUILDING_NAME).write_text("")
    (venv / "half").write_text("")
    assert "half-built" in stage0.missing_message(venv, reexeced=False)
    logs: list[str] = []
    make(checkout, FakeRunner(), logs=logs).ensure()
    assert any("left half-built by an interrupted `init`" in line for line in logs)
    assert not (venv / "half").exists()
    assert not (venv / locate.BUILDING_NAME).exists()
    assert not (checkout / ".venv.old").exists()
    assert make(checkout, FakeRunner()).is_current()
    # also when EnvBuilder had not even written pyvenv.cfg yet
    shutil.rmtree(venv)
    venv.mkdir()
    (venv / locate.BUILDING_NAME).write_text("")
    make(checkout, FakeRunner()).ensure()
    assert make(checkout, FakeRunner()).is_current()


def test_files_are_written_with_fsutil_atomic_write(checkout: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from siteboot import fsutil

    written: list[tuple[str, int]] = []
    real = fsutil.atomic_write

    def recording(path: Path, data: str | bytes, mode: int = 0o600, gid: int | None = None) -> None:
        written.append((path.name, mode))
        real(path, data, mode, gid)

    monkeypatch.setattr(fsutil, "atomic_write", recording)
    make(checkout, FakeRunner()).ensure()
    assert sorted(written) == [("siteboot", 0o755), ("siteboot-stamp.json", 0o644),
                               ("siteboot.pth", 0o644)]
    assert not any(hasattr(module, "_write_text")
                   for module in (locate, stamp, requirements, pipsource, build))
    venv = checkout / ".venv"
    assert (venv / locate.STAMP_NAME).stat().st_mode & 0o777 == 0o644


def test_failed_upgrade_leaves_the_old_venv_and_removes_new(checkout: Path) -> None:
    venv = checkout / ".venv"
    make(checkout, FakeRunner()).ensure()
    (venv / "marker").write_text("old")
    old_stamp = (venv / locate.STAMP_NAME).read_text()
    (checkout / "setup.cfg").write_text(SETUP_CFG.replace("click>=8.0", "click>=8.1"))
    runner = FakeRunner(fail=["click>=8.1"])
    with pytest.raises(BootstrapError) as info:
        make(checkout, runner).ensure()
    message = str(info.value)
    assert (venv / "marker").read_text() == "old"
    assert (venv / locate.STAMP_NAME).read_text() == old_stamp
    assert not (checkout / ".venv.new").exists()
    assert not (checkout / ".venv.old").exists()
    assert "pip could not install" in message
    assert "No matching distribution found for click>=8.1" in message
    assert f"the previous tool venv at {venv} is unchanged and still works" in message
    assert "hint:" in message
    assert len(message.splitlines()) < 20  # pip's tail, not all of its output
    assert "noise 0\n" not in message
    # what was built was the .new venv
    assert any(str(checkout / ".venv.new") in c[0] for c in runner.pip_calls)


def test_upgrade_swaps_and_rewrites_paths(checkout: Path) -> None:
    venv = checkout / ".venv"
    make(checkout, FakeRunner()).ensure()
    (venv / "marker").write_text("old")
    (checkout / ".venv.new").mkdir()  # a leftover from an interrupted run
    (checkout / ".venv.new" / locate.BUILDING_NAME).write_text("")
    (checkout / ".venv.new" / "junk").write_text("")
    (checkout / "setup.cfg").write_text(SETUP_CFG.replace("click>=8.0", "click>=8.1"))
    runner = FakeRunner()
    logs: list[str] = []
    make(checkout, runner, logs=logs).ensure()
    assert not (venv / "marker").exists()
    assert not (checkout / ".venv.new").exists()
    assert not (checkout / ".venv.old").exists()
    new = str(checkout / ".venv.new")
    assert new not in (venv / "pyvenv.cfg").read_text()
    assert (venv / "bin" / "pip").read_text().startswith(f"#!{venv}/bin/python\n")
    assert f'VIRTUAL_ENV="{venv}"' in (venv / "bin" / "activate").read_text()
    assert "(.venv)" in (venv / "bin" / "activate").read_text()  # the final name as prompt
    assert os.access(venv / "bin" / "pip", os.X_OK)
    assert new.encode() in (venv / "bin" / "native").read_bytes()  # binaries untouched
    assert make(checkout, FakeRunner()).is_current()
    assert not (venv / locate.BUILDING_NAME).exists()
    assert any("out of date (setup.cfg's install_requires changed)" in line for line in logs)
    assert f"removing leftover {checkout / '.venv.new'}" in logs
    assert "click>=8.1" in runner.pip_calls[-1]


def test_a_changed_python_rebuilds(checkout: Path) -> None:
    make(checkout, FakeRunner("3.9.18")).ensure()
    logs: list[str] = []
    runner = FakeRunner("3.9.19")
    make(checkout, runner, logs=logs).ensure()
    assert any("out of date (its python changed (3.9.18 -> 3.9.19))" in line for line in logs)
    assert json.loads((checkout / ".venv" / locate.STAMP_NAME).read_text())["python"] == "3.9.19"


def test_a_venv_siteboot_did_not_make_is_not_replaced(checkout: Path) -> None:
    venv = checkout / ".venv"
    fake_make_venv(venv, ".venv")
    with pytest.raises(BootstrapError, match="did not make"):
        make(checkout, FakeRunner()).ensure()
    assert (venv / "pyvenv.cfg").exists()


def test_a_directory_that_is_not_a_venv_is_refused(checkout: Path) -> None:
    (checkout / ".venv").mkdir()
    (checkout / ".venv" / "precious").write_text("")
    with pytest.raises(BootstrapError, match="is not a virtualenv"):
        make(checkout, FakeRunner()).ensure()
    assert (checkout / ".venv" / "precious").exists()


def test_rewrite_paths_leaves_binaries_and_symlinks(tmp_path: Path) -> None:
    venv = tmp_path / "v"
    fake_make_venv(venv, "v")
    changed = build.rewrite_paths(venv, str(venv), "/final/v")
    assert sorted(p.name for p in changed) == ["activate", "pip", "pyvenv.cfg"]
    assert (venv / "bin" / "pip").read_text() == "#!/final/v/bin/python\nimport pip\n"
    assert (venv / "pyvenv.cfg").read_text() == \
        "home = /usr/bin\nversion = 3.9.18\ncommand = python3 -m venv /final/v\n"
    assert (venv / "bin" / "python3").is_symlink()


# --- getting pip without ensurepip ---------------------------------------------------------------


def test_without_ensurepip_pip_comes_from_a_local_wheel(checkout: Path, tmp_path: Path) -> None:
    wheelhouse_wheel = make_wheel(tmp_path / "wh", "23.0")
    make_wheel(tmp_path / "links", "24.0")
    make_wheel(tmp_path / "system", "25.0")
    environ = {"PIP_FIND_LINKS": str(tmp_path / "links")}
    runner = FakeRunner()
    logs: list[str] = []
    make(checkout, runner, ensurepip=False, environ=environ, wheelhouse=tmp_path / "wh",
         system_dirs=[tmp_path / "system"], logs=logs).ensure()
    install_pip = runner.pip_calls[0]
    assert install_pip[1:] == [f"{wheelhouse_wheel}/pip", "install", "--no-index",
                               "--disable-pip-version-check", "--quiet", str(wheelhouse_wheel)]
    assert all("ensurepip" not in c for c in runner.calls)
    assert (f"ensurepip is not available (Debian without python3-venv?); installed pip from "
            f"{wheelhouse_wheel}") in logs


def test_find_links_before_system_wheels(checkout: Path, tmp_path: Path) -> None:
    links_wheel = make_wheel(tmp_path / "links", "21.0")
    make_wheel(tmp_path / "system", "25.0")
    runner = FakeRunner()
    make(checkout, runner, ensurepip=False, environ={"PIP_FIND_LINKS": f"file://{tmp_path}/links"},
         system_dirs=[tmp_path / "system"]).ensure()
    assert runner.pip_calls[0][-1] == str(links_wheel)


def test_failing_ensurepip_falls_back_to_a_wheel(checkout: Path, tmp_path: Path) -> None:
    system_wheel = make_wheel(tmp_path / "system", "23.0.1")
    runner = FakeRunner(fail=["ensurepip"])
    logs: list[str] = []
    make(checkout, runner, system_dirs=[tmp_path / "system"], logs=logs).ensure()
    assert runner.pip_calls[0][1:3] == ["-Im", "ensurepip"]
    assert runner.pip_calls[1][-1] == str(system_wheel)
    assert any(line.startswith("ensurepip failed (ERROR: No matching") for line in logs)


def test_no_local_wheel_fetches_from_the_configured_index(checkout: Path) -> None:
    wheel = b"pretend wheel"
    digest = hashlib.sha256(wheel).hexdigest()
    page = f'<a href="../../files/pip-24.0-py3-none-any.whl#sha256={digest}">pip</a>'
    fetched = {"https://mirror.example/simple/pip/": page.encode(),
               "https://mirror.example/files/pip-24.0-py3-none-any.whl": wheel}
    runner = FakeRunner()
    logs: list[str] = []
    make(checkout, runner, ensurepip=False, config={"index-url": "https://mirror.example/simple"},
         fetched=fetched, logs=logs).ensure()
    install_pip = runner.pip_calls[0]
    assert install_pip[-1].endswith("/pip-24.0-py3-none-any.whl")
    assert not Path(install_pip[-1]).exists()  # the temp dir is gone again
    assert any("fetching one from https://mirror.example/simple" in line for line in logs)


def test_no_pip_anywhere_is_one_clear_error(checkout: Path) -> None:
    with pytest.raises(BootstrapError) as info:
        make(checkout, FakeRunner(), ensurepip=False).ensure()
    message = str(info.value)
    assert "ensurepip is not available" in message
    assert "no pip wheel on this machine" in message
    assert "cannot read https://pypi.org/simple/pip/" in message
    assert "apt install python3-venv" in message
    assert not (checkout / ".venv").exists()


def test_with_a_wheelhouse_the_index_is_not_asked(checkout: Path, tmp_path: Path) -> None:
    (tmp_path / "wh").mkdir()
    with pytest.raises(BootstrapError, match=r"no pip wheel for Python 3\.9\.18 in") as info:
        make(checkout, FakeRunner(), ensurepip=False, wheelhouse=tmp_path / "wh").ensure()
    assert "cannot read" not in str(info.value)


# --- the launcher and the real EnvBuilder (fast: no pip) -----------------------------------------


def test_launcher_finds_its_venv_also_through_a_symlink(tmp_path: Path) -> None:
    bindir = tmp_path / "somewhere" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "python").write_text('#!/bin/sh\necho "$0 $*"\n')
    (bindir / "python").chmod(0o755)
    (bindir / "siteboot").write_text(build.LAUNCHER)
    (bindir / "siteboot").chmod(0o755)
    (tmp_path / "link").symlink_to(bindir / "siteboot")
    for launcher in (bindir / "siteboot", tmp_path / "link"):
        out = subprocess.run([str(launcher), "status", "a b"], capture_output=True, text=True,
                             check=True, cwd="/").stdout
        assert out == f"{bindir}/python -I -m siteboot status a b\n"
    # no external command (dirname) for a plain file, so no PATH needed; a bare name works
    out = subprocess.run([str(bindir / "siteboot"), "x"], capture_output=True, text=True,
                         check=True, cwd="/", env={"PATH": "/nonexistent"}).stdout
    assert out == f"{bindir}/python -I -m siteboot x\n"
    out = subprocess.run(["/bin/sh", "siteboot", "y"], capture_output=True, text=True, check=True,
                         cwd=str(bindir), env={"PATH": "/nonexistent"}).stdout
    assert out == "./python -I -m siteboot y\n"
    assert "dirname" not in build.LAUNCHER


def test_launcher_ignores_a_siteboot_package_in_the_current_directory(tmp_path: Path) -> None:
    venv, planted = make_isolated_venv(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(planted))
    env.pop("SITEBOOT_BOOTSTRAPPED", None)
    # what the launcher guards against: plain `-m` runs the planted package
    hijacked = subprocess.run([str(venv / "bin" / "python"), "-m", "siteboot"], cwd=planted,
                              capture_output=True, text=True, check=True, env=env).stdout
    assert hijacked == "planted\n"
    out = subprocess.run([str(venv / "bin" / "siteboot"), "status"], cwd=planted,
                         capture_output=True, text=True, check=True, env=env).stdout
    assert out == "checkout 1 None ['status']\n"  # the checkout, through siteboot.pth


def test_tool_env_builder_links_the_base_interpreter(tmp_path: Path) -> None:
    build.create_venv(tmp_path / "v", "shown")
    python = tmp_path / "v" / "bin" / "python"
    assert python.exists()
    assert "(shown)" in (tmp_path / "v" / "bin" / "activate").read_text()
    cfg = (tmp_path / "v" / "pyvenv.cfg").read_text()
    assert f"home = {os.path.dirname(build.base_interpreter())}" in cfg
    assert not os.path.realpath(python).startswith(os.path.realpath(sys.prefix) + os.sep)
    assert build.probe_python(python, build.run_command) == \
        ".".join(str(n) for n in sys.version_info[:3])
    assert not (tmp_path / "v" / "bin" / "pip").exists()


# --- pip and the requirements in one pip run ------------------------------------------------------


def bundled_wheels(tmp_path: Path) -> list[Path]:
    pip = make_wheel(tmp_path / "bundled", "23.2.1")
    setuptools = tmp_path / "bundled" / "setuptools-65.5.0-py3-none-any.whl"
    setuptools.write_bytes(pip.read_bytes())
    return [pip, setuptools]


def test_ensurepips_wheels_and_the_requirements_go_in_one_pip_run(checkout: Path,
                                                                   tmp_path: Path) -> None:
    runner = FakeRunner()
    wheels = bundled_wheels(tmp_path)
    make(checkout, runner, bundled=wheels).ensure()
    (pip,) = runner.pip_calls
    assert pip[1:] == ["-I", f"{wheels[0]}/pip", "install", "--disable-pip-version-check",
                       "--no-compile", *map(str, wheels), *REQUIRES]
    assert make(checkout, FakeRunner()).is_current()


def test_one_pip_run_from_a_wheelhouse(checkout: Path, tmp_path: Path) -> None:
    runner = FakeRunner()
    wheels = bundled_wheels(tmp_path)
    make(checkout, runner, bundled=wheels, wheelhouse=tmp_path / "wh").ensure()
    (pip,) = runner.pip_calls
    assert pip[6:9] == ["--no-index", "--find-links", str(tmp_path / "wh")]


def test_a_requirement_pip_cannot_install_fails_once(checkout: Path, tmp_path: Path) -> None:
    runner = FakeRunner(fail=["click>=8.0"])
    with pytest.raises(BootstrapError) as caught:
        make(checkout, runner, bundled=bundled_wheels(tmp_path)).ensure()
    assert len(runner.pip_calls) == 1  # no second try of the same requirements
    assert "pip could not install siteboot's dependencies" in caught.value.message
    assert "No matching distribution found for click>=8.0" in caught.value.message
    assert not (checkout / ".venv").exists()


class PipWheelBroken(FakeRunner):
    def __call__(self, cmd: Sequence[str]) -> RunResult:
        if any(arg.endswith(".whl/pip") for arg in cmd):
            self.calls.append(list(cmd))
            return RunResult(1, "zipimport.ZipImportError: bad local file header\n")
        return super().__call__(cmd)


def test_a_bundled_pip_that_does_not_run_means_ensurepip_then_pip(checkout: Path,
                                                                  tmp_path: Path) -> None:
    runner = PipWheelBroken()
    logs: list[str] = []
    make(checkout, runner, bundled=bundled_wheels(tmp_path), logs=logs).ensure()
    _at_once, ensurepip, pip = runner.pip_calls
    assert ensurepip[1:] == ["-Im", "ensurepip", "--upgrade", "--default-pip"]
    assert pip[-3:] == REQUIRES
    assert any("did not run (zipimport.ZipImportError" in line for line in logs)


def test_without_ensurepip_its_wheels_are_not_looked_for(checkout: Path, tmp_path: Path) -> None:
    runner = FakeRunner()
    make_wheel(tmp_path / "wh", "23.0")
    make(checkout, runner, ensurepip=False, bundled=bundled_wheels(tmp_path),
         wheelhouse=tmp_path / "wh").ensure()
    assert all("--no-compile" not in call for call in runner.pip_calls)


def test_ensurepip_wheels_are_pip_and_setuptools() -> None:
    wheels = build.ensurepip_wheels()
    assert {w.name.split("-")[0] for w in wheels} <= {"pip", "setuptools"}
    assert not wheels or any(w.name.startswith("pip-") for w in wheels)
