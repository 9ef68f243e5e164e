"""siteboot/__main__.py (stage 0): what it decides for a command line, and what it imports."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from siteboot import __main__ as stage0
from siteboot.bootstrap import build, locate, requirements, stamp
from siteboot.bootstrap.build import Bootstrapper
from siteboot.errors import BootstrapError
from tests.helpers import REPO
from tests.unit.bootstrap_fakes import FakeRunner, make, make_checkout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return make_checkout(tmp_path)


@pytest.mark.parametrize(("argv", "expected"), [
    (["init", "--env", "dev"], "init"),
    (["--debug", "init"], "init"),
    (["--wheelhouse", "/w", "init"], "init"),
    (["-e", "dev", "status"], "status"),
    (["--help"], None),
    ([], None),
    (["--", "init"], "init"),
])
def test_first_command(argv: list[str], expected: str | None) -> None:
    assert stage0.first_command(argv) == expected


VENV = Path("/co/.venv")


def never() -> bool:
    raise AssertionError("must not be asked")


@pytest.mark.parametrize(("argv", "checkout", "prefix", "reexeced", "ready", "deps", "expected"), [
    # installed from a wheel: always the CLI
    (["init"], None, "/usr", False, never, never, stage0.CLI),
    (["status"], None, "/usr", False, never, never, stage0.CLI),
    # inside the tool venv: the CLI, init included
    (["init"], Path("/co"), str(VENV), False, never, never, stage0.CLI),
    (["status"], Path("/co"), str(VENV), False, never, never, stage0.CLI),
    # init outside: bootstrap (the builder decides whether anything is to do)
    (["init", "--env", "dev"], Path("/co"), "/usr", False, never, never, stage0.BOOTSTRAP),
    (["--debug", "init"], Path("/co"), "/usr", False, never, never, stage0.BOOTSTRAP),
    # other commands: re-exec into a current venv, else in-process, else the hint
    (["status"], Path("/co"), "/usr", False, lambda: True, never, stage0.REEXEC),
    ([], Path("/co"), "/usr", False, lambda: True, never, stage0.REEXEC),
    (["status"], Path("/co"), "/dev-env", False, lambda: False, lambda: True, stage0.CLI),
    (["status"], Path("/co"), "/usr", False, lambda: False, lambda: False, stage0.MISSING),
    # --help and --version never build; without a venv or the dependencies stage 0 answers
    (["--help"], Path("/co"), "/usr", False, lambda: False, lambda: False, stage0.HELP),
    ([], Path("/co"), "/usr", False, lambda: False, lambda: False, stage0.HELP),
    (["--version"], Path("/co"), "/usr", False, lambda: False, lambda: False, stage0.HELP),
    (["init", "--help"], Path("/co"), "/usr", False, lambda: False, lambda: False, stage0.HELP),
    (["init", "-h"], Path("/co"), "/usr", False, lambda: True, never, stage0.REEXEC),
    (["--help"], Path("/co"), "/dev-env", False, lambda: False, lambda: True, stage0.CLI),
    (["ctl", "-i", "a", "--", "--help"], Path("/co"), "/usr", False, lambda: False,
     lambda: False, stage0.MISSING),  # supervisorctl's --help, not ours
    (["init", "--", "--help"], Path("/co"), "/usr", False, never, never, stage0.BOOTSTRAP),
    # after a re-exec that did not land in the venv: never again
    (["init"], Path("/co"), "/usr", True, never, lambda: True, stage0.CLI),
    (["init"], Path("/co"), "/usr", True, never, lambda: False, stage0.MISSING),
    (["status"], Path("/co"), "/usr", True, never, lambda: False, stage0.MISSING),
])
def test_choose_action(argv, checkout, prefix, reexeced, ready, deps, expected) -> None:
    assert stage0.choose_action(argv, checkout=checkout, venv=VENV if checkout else None,
                                prefix=prefix, reexeced=reexeced, venv_ready=ready,
                                deps_available=deps) == expected


def test_choose_action_compares_resolved_paths(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert stage0.choose_action(["init"], checkout=tmp_path, venv=tmp_path / "link",
                                prefix=str(tmp_path / "real"), reexeced=False,
                                venv_ready=never, deps_available=never) == stage0.CLI


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []


@pytest.fixture
def fake_stage0(monkeypatch: pytest.MonkeyPatch, checkout: Path) -> Recorder:
    """run() with a fake checkout, recording re-execs, builds and CLI runs instead of doing them."""
    rec = Recorder()
    monkeypatch.setattr(locate, "find_checkout", lambda: checkout)

    def reexec(python: Path, args: Sequence[str]) -> None:
        rec.calls.append(("reexec", python))
        raise SystemExit("exec'd")  # the real one never returns

    monkeypatch.setattr(locate, "reexec", reexec)
    monkeypatch.setattr(stage0, "run_cli", lambda args: rec.calls.append(("cli", list(args))))
    monkeypatch.setattr(stage0, "_deps_available", lambda checkout: False)
    monkeypatch.delenv("SITEBOOT_VENV", raising=False)
    monkeypatch.delenv("SITEBOOT_DEBUG", raising=False)
    monkeypatch.delenv("SITEBOOT_BOOTSTRAPPED", raising=False)
    return rec


def test_run_says_to_init_when_nothing_is_installed(fake_stage0: Recorder,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        stage0.run(["status"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: siteboot's dependencies are not installed; run "
                          "`python3 -m siteboot init`")
    assert err.count("\n") == 1
    assert fake_stage0.calls == []


@pytest.mark.parametrize("argv", [["--help"], ["init", "--help"], ["--version"], [],
                                  ["--debug", "logs", "-h"]])
def test_help_on_a_fresh_clone_builds_nothing(fake_stage0: Recorder, checkout: Path, argv,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(Bootstrapper, "ensure", never)
    with pytest.raises(SystemExit) as info:
        stage0.run(argv)
    assert info.value.code == 0
    assert fake_stage0.calls == []
    assert not (checkout / ".venv").exists()
    out = capsys.readouterr().out
    assert out.startswith("siteboot, version " if argv == ["--version"] else "Usage: siteboot ")


def test_help_of_a_command_that_does_not_exist(fake_stage0: Recorder,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        stage0.run(["stauts", "--help"])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("error: no such command 'stauts' (did you mean 'status'?)\n"
                                       "  hint: `python3 -m siteboot --help` lists them\n")


def test_run_bootstraps_then_reexecs(fake_stage0: Recorder, checkout: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Path | None] = []

    def ensure(self: Bootstrapper) -> Path:
        built.append(self.wheelhouse)
        return self.venv / "bin" / "python"

    monkeypatch.setattr(Bootstrapper, "ensure", ensure)
    with pytest.raises(SystemExit, match="exec'd"):
        stage0.run(["init", "--wheelhouse", "/w"])
    assert built == [Path("/w")]
    assert fake_stage0.calls == [("reexec", checkout / ".venv" / "bin" / "python")]


def test_run_prints_bootstrap_errors_without_traceback(fake_stage0: Recorder,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def ensure(self: Bootstrapper) -> Path:
        raise BootstrapError("pip failed", "pass --wheelhouse")

    monkeypatch.setattr(Bootstrapper, "ensure", ensure)
    with pytest.raises(SystemExit) as info:
        stage0.run(["init"])
    assert info.value.code == 1
    assert capsys.readouterr().err == "error: pip failed\n  hint: pass --wheelhouse\n"
    monkeypatch.setenv("SITEBOOT_DEBUG", "1")
    with pytest.raises(BootstrapError):
        stage0.run(["init"])


def test_run_consumes_the_reexec_marker(fake_stage0: Recorder,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITEBOOT_BOOTSTRAPPED", "1")
    monkeypatch.setattr(stage0, "_deps_available", lambda checkout: True)
    stage0.run(["init"])
    assert fake_stage0.calls == [("cli", ["init"])]
    assert "SITEBOOT_BOOTSTRAPPED" not in os.environ


def test_run_reexecs_into_a_current_venv(fake_stage0: Recorder, checkout: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage0, "_venv_ready", lambda checkout, venv: True)
    with pytest.raises(SystemExit, match="exec'd"):
        stage0.run(["status"])
    assert fake_stage0.calls == [("reexec", checkout / ".venv" / "bin" / "python")]


def test_run_reexecs_without_starting_the_venvs_python(fake_stage0: Recorder, checkout: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the tool venv, `status` starts two interpreters (this one and the venv's), not 3."""
    make(checkout, FakeRunner()).ensure()

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("stage 0 must not start a process to decide on a re-exec")

    monkeypatch.setattr(build, "probe_python", no_process)
    monkeypatch.setattr(subprocess, "Popen", no_process)
    venv = checkout / ".venv"
    assert stage0._venv_ready(checkout, venv)
    with pytest.raises(SystemExit, match="exec'd"):
        stage0.run(["status"])
    assert fake_stage0.calls == [("reexec", venv / "bin" / "python")]
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.9.19\n")  # python changed
    assert not stage0._venv_ready(checkout, venv)


def test_stage0_imports_heavy_modules_lazily() -> None:
    code = textwrap.dedent("""
        import sys
        import siteboot.__main__
        rest = ("siteboot.bootstrap.stamp", "siteboot.bootstrap.requirements",
                "siteboot.bootstrap.pipsource", "siteboot.bootstrap.build")
        print(sorted(m for m in rest if m in sys.modules))
        import siteboot.bootstrap.build  # and with it every module of stage 0
        heavy = ("urllib.request", "ssl", "venv", "subprocess", "shutil", "tempfile", "zipfile",
                 "ast", "html.parser", "siteboot.fsutil")
        print(sorted(m for m in heavy if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(REPO)).stdout
    assert out.splitlines() == ["[]", "[]"]


# What only `init` needs (building, pip, writing files), and the dependency check of a dev env.
# (Not urllib.parse: pathlib imports it.)
NOT_FOR_A_DECISION = ("siteboot.bootstrap.build", "siteboot.bootstrap.pipsource", "siteboot.fsutil",
                      "importlib.metadata", "urllib.request", "ssl", "html", "tempfile", "zipfile",
                      "shutil", "subprocess", "venv")
# What tells whether the tool venv is current: a run inside it never asks.
FOR_THE_STAMP = ("siteboot.bootstrap.stamp", "siteboot.bootstrap.requirements", "json", "hashlib",
                 "ast")


def decide_in_a_fresh_interpreter(venv: str) -> tuple[str, list[str]]:
    """Run stage 0's decision on `siteboot status` with the tool venv at ``venv`` (sys.prefix when
    empty) in a python without site-packages; what it did, and the modules it imported."""
    code = textwrap.dedent(f"""
        import os, sys
        before = set(sys.modules)
        import siteboot.__main__ as stage0
        from siteboot.bootstrap import locate
        os.environ["SITEBOOT_VENV"] = {venv!r} or sys.prefix
        locate.reexec = lambda python, args: print("reexec", python, args)  # instead of exec
        stage0.stage0(["status"], reexeced=False)
        print(sorted(set(sys.modules) - before))
    """)
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(REPO)).stdout.splitlines()
    return "\n".join(out[:-1]), ast.literal_eval(out[-1])


def imported(loaded: list[str], names: Sequence[str]) -> list[str]:
    return sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in names))


def test_a_run_inside_the_tool_venv_decides_with_locate_alone() -> None:
    """What `bin/siteboot status` pays for before the CLI: neither the stamp nor the build."""
    action, loaded = decide_in_a_fresh_interpreter("")
    assert action == ""  # the CLI runs here
    assert "siteboot.bootstrap.locate" in loaded
    assert imported(loaded, NOT_FOR_A_DECISION + FOR_THE_STAMP) == []


def test_a_reexec_into_a_current_venv_reads_the_stamp_and_builds_nothing(tmp_path: Path) -> None:
    venv = tmp_path / "tool-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    python_version = ".".join(str(n) for n in sys.version_info[:3])
    (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion = {python_version}\n")
    stamp.write_stamp(venv, requirements.read_requirements(REPO / "setup.cfg"),
                      stamp.read_metadata_version(REPO), python_version, REPO)
    action, loaded = decide_in_a_fresh_interpreter(str(venv))
    assert action == f"reexec {venv / 'bin' / 'python'} ['status']"
    assert "siteboot.bootstrap.stamp" in loaded
    assert imported(loaded, NOT_FOR_A_DECISION) == []


def test_stage0_imports_nothing_third_party() -> None:
    code = textwrap.dedent("""
        import sys
        import siteboot.__main__, siteboot.bootstrap.build
        bad = sorted(m for m in ("click", "jinja2", "psutil", "supervisor", "virtualenv", "tomli")
                     if m in sys.modules)
        print(bad)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(REPO)).stdout
    assert out.strip() == "[]"
