"""Stage 0 (siteboot/bootstrap.py, siteboot/__main__.py) with every subprocess faked."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from siteboot import __main__ as stage0
from siteboot import bootstrap
from siteboot.bootstrap import Bootstrapper
from siteboot.errors import BootstrapError
from siteboot.proc import RunResult

REQUIRES = ["supervisor>=4.2", "click>=8.0", 'tomli>=1.1; python_version < "3.11"']

SETUP_CFG = """
[metadata]
name = siteboot
version = attr: siteboot.__version__

[options]
install_requires =
    supervisor>=4.2
    # a comment inside the list
    click>=8.0

    tomli>=1.1; python_version < "3.11"

[options.extras_require]
test =
    pytest
"""


class FakeRunner:
    """Records every command; the python probe answers ``version``, pip/ensurepip as told."""

    def __init__(self, version: str | None = "3.9.18", fail: Sequence[str] = ()) -> None:
        self.version = version
        self.fail = list(fail)  # arguments that make a command fail
        self.calls: list[list[str]] = []

    def __call__(self, cmd: Sequence[str]) -> RunResult:
        cmd = list(cmd)
        self.calls.append(cmd)
        if "-c" in cmd:
            return RunResult(0, f"{self.version}\n") if self.version else RunResult(1, "boom")
        for needle in self.fail:
            if needle in cmd:
                lines = "".join(f"noise {i}\n" for i in range(30))
                return RunResult(1, f"{lines}ERROR: No matching distribution found for {needle}\n")
        return RunResult(0, "ok\n")

    @property
    def pip_calls(self) -> list[list[str]]:
        return [c for c in self.calls if "-c" not in c and "compileall" not in c]


def fake_make_venv(target: Path, prompt: str) -> None:
    """What EnvBuilder leaves: pyvenv.cfg, bin/python, activate and a script with the path."""
    (target / "bin").mkdir(parents=True)
    (target / "lib" / "python3.9" / "site-packages").mkdir(parents=True)
    (target / "pyvenv.cfg").write_text(
        f"home = /usr/bin\nversion = 3.9.18\ncommand = python3 -m venv {target}\n")
    (target / "bin" / "python").write_text("")
    (target / "bin" / "python").chmod(0o755)
    (target / "bin" / "activate").write_text(f'VIRTUAL_ENV="{target}"\nPS1="({prompt}) $PS1"\n')
    (target / "bin" / "pip").write_text(f"#!{target}/bin/python\nimport pip\n")
    (target / "bin" / "pip").chmod(0o755)
    (target / "bin" / "native").write_bytes(b"\x7fELF\0" + str(target).encode())
    (target / "bin" / "python3").symlink_to(target / "bin" / "python")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "siteboot").mkdir(parents=True)
    (root / "siteboot" / "__init__.py").write_text('"""doc"""\n\n__version__ = "1.2.3"\n')
    (root / "setup.cfg").write_text(SETUP_CFG)
    return root


def make(checkout: Path, runner: FakeRunner, *, venv: Path | None = None, ensurepip: bool = True,
         environ: dict[str, str] | None = None, config: dict[str, str] | None = None,
         system_dirs: Sequence[Path] = (), wheelhouse: Path | None = None,
         fetched: dict[str, bytes] | None = None, logs: list[str] | None = None) -> Bootstrapper:
    def fetch(url: str) -> bytes:
        if fetched is None or url not in fetched:
            raise OSError(f"no network in unit tests: {url}")
        return fetched[url]

    builder = Bootstrapper(checkout, venv or checkout / ".venv", runner=runner,
                           wheelhouse=wheelhouse, environ=environ or {},
                           pip_config=config or {}, ensurepip_available=lambda: ensurepip,
                           make_venv=fake_make_venv, fetcher=fetch,
                           log=(logs.append if logs is not None else lambda _m: None))
    builder.system_wheel_dirs = list(system_dirs)
    return builder


def make_wheel(folder: Path, version: str, requires_python: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pip-{version}-py3-none-any.whl"
    headers = f"Metadata-Version: 2.1\nName: pip\nVersion: {version}\n"
    if requires_python:
        headers += f"Requires-Python: {requires_python}\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pip/__init__.py", "")
        archive.writestr(f"pip-{version}.dist-info/METADATA", headers + "\nlong description\n")
    return path


# --- setup.cfg, stamp ---------------------------------------------------------------------------


def test_requirements_are_read_as_written(checkout: Path) -> None:
    assert bootstrap.read_requirements(checkout / "setup.cfg") == REQUIRES


def test_missing_setup_cfg_is_a_bootstrap_error(tmp_path: Path) -> None:
    with pytest.raises(BootstrapError, match="cannot read install_requires"):
        bootstrap.read_requirements(tmp_path / "setup.cfg")


def test_metadata_version_from_attr_and_literal(checkout: Path) -> None:
    assert bootstrap.read_metadata_version(checkout) == "1.2.3"
    (checkout / "setup.cfg").write_text("[metadata]\nversion = 4.5\n")
    assert bootstrap.read_metadata_version(checkout) == "4.5"


def test_the_real_checkout_parses() -> None:
    checkout = bootstrap.find_checkout()
    assert checkout is not None
    requires = bootstrap.read_requirements(checkout / "setup.cfg")
    assert any(r.startswith("supervisor") for r in requires)
    from siteboot import __version__

    assert bootstrap.read_metadata_version(checkout) == __version__


def test_find_checkout_needs_our_setup_cfg(tmp_path: Path, checkout: Path) -> None:
    assert bootstrap.find_checkout(checkout / "siteboot") == checkout
    (tmp_path / "site-packages" / "siteboot").mkdir(parents=True)
    assert bootstrap.find_checkout(tmp_path / "site-packages" / "siteboot") is None
    (checkout / "setup.cfg").write_text("[metadata]\nname = other\n")
    assert bootstrap.find_checkout(checkout / "siteboot") is None


def test_stamp_covers_every_input() -> None:
    base = bootstrap.compute_stamp(REQUIRES, "1.0", "3.9.18", Path("/a"))
    assert base == bootstrap.compute_stamp(list(REQUIRES), "1.0", "3.9.18", Path("/a"))
    assert len({base,
                bootstrap.compute_stamp(REQUIRES[:-1], "1.0", "3.9.18", Path("/a")),
                bootstrap.compute_stamp(REQUIRES, "1.1", "3.9.18", Path("/a")),
                bootstrap.compute_stamp(REQUIRES, "1.0", "3.9.19", Path("/a")),
                bootstrap.compute_stamp(REQUIRES, "1.0", "3.9.18", Path("/b"))}) == 5


def test_stamp_matches_only_with_a_working_python_of_the_same_version(checkout: Path) -> None:
    venv = checkout / ".venv"
    fake_make_venv(venv, ".venv")
    assert not make(checkout, FakeRunner()).is_current(run_python=True)  # no stamp yet
    bootstrap.write_stamp(venv, REQUIRES, "1.2.3", "3.9.18", checkout)
    assert json.loads((venv / bootstrap.STAMP_NAME).read_text())["python"] == "3.9.18"
    assert make(checkout, FakeRunner("3.9.18")).is_current(run_python=True)
    assert not make(checkout, FakeRunner("3.9.19")).is_current(run_python=True)
    assert not make(checkout, FakeRunner(None)).is_current(run_python=True)
    (venv / "bin" / "python").unlink()
    assert not make(checkout, FakeRunner("3.9.18")).is_current(run_python=True)


def test_is_current_reads_pyvenv_cfg_and_runs_nothing(checkout: Path, tmp_path: Path) -> None:
    venv = checkout / ".venv"
    fake_make_venv(venv, ".venv")
    bootstrap.write_stamp(venv, REQUIRES, "1.2.3", "3.9.18", checkout)
    runner = FakeRunner("3.9.19")  # what the python would say if it were asked
    builder = make(checkout, runner)
    assert builder.is_current()
    cfg = venv / "pyvenv.cfg"
    cfg.write_text("home = /usr/bin\nversion = 3.9.19\n")
    assert not builder.is_current()
    cfg.write_text("home = /usr/bin\nversion_info = 3.9.18.final.0\n")  # virtualenv's form
    assert builder.is_current()
    cfg.write_text("home = /usr/bin\n")
    assert not builder.is_current()
    cfg.write_text("home = /usr/bin\nversion = 3.9.18\n")
    (venv / "bin" / "python").chmod(0o644)
    assert not builder.is_current()  # not executable
    (venv / "bin" / "python").unlink()
    (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3.9")
    assert not builder.is_current()  # dangling: the base python was removed
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "python3.9").write_text("")
    (tmp_path / "gone" / "python3.9").chmod(0o755)
    assert builder.is_current()
    (tmp_path / "gone" / "python3.11").write_text("")
    (tmp_path / "gone" / "python3.11").chmod(0o755)
    (venv / "bin" / "python").unlink()
    (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3.11")
    assert not builder.is_current()  # python3 now is another minor version
    assert runner.calls == []


@pytest.mark.parametrize(("text", "version"), [
    ("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.9.18\n", "3.9.18"),
    ("home = /usr/bin\nversion_info = 3.12.3.final.0\nvirtualenv = 20.25.0\n", "3.12.3"),
    ("home = /usr/bin\nversion_info = 3.12.3\n", "3.12.3"),
    ("version = 3.13.0rc2\n", "3.13.0"),
    ("home = /usr/bin\n", None),
    ("version = 3.9\n", None),
])
def test_venv_cfg_version(tmp_path: Path, text: str, version: str | None) -> None:
    (tmp_path / "pyvenv.cfg").write_text(text)
    assert bootstrap.venv_cfg_version(tmp_path) == version
    assert bootstrap.venv_cfg_version(tmp_path / "missing") is None


# --- building, stamps and transactions ----------------------------------------------------------


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
    assert launcher.read_text() == bootstrap.LAUNCHER
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
        seen.append((target, (target / bootstrap.BUILDING_NAME).is_file(), venv.exists()))
        fake_make_venv(target, prompt)

    builder = make(checkout, FakeRunner())
    builder.make_venv = make_venv
    builder.ensure()
    assert seen == [(new, True, False)]  # marked before anything else; the final path untouched
    assert not new.exists()
    assert not (venv / bootstrap.BUILDING_NAME).exists()
    assert read_stamp_python(venv) == "3.9.18"
    assert str(new) not in (venv / "pyvenv.cfg").read_text()
    assert (venv / "bin" / "pip").read_text().startswith(f"#!{venv}/bin/python\n")
    assert make(checkout, FakeRunner()).is_current()


def read_stamp_python(venv: Path) -> object:
    return bootstrap.read_stamp(venv).get("python")


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
        patched.setattr(bootstrap, "_remove", lambda path: None)  # a killed process cleans nothing
        with pytest.raises(Killed):
            make(checkout, killed_runner).ensure()  # type: ignore[arg-type]
    assert not os.path.lexists(venv)  # never a stamp-less venv at the final path
    assert (new / bootstrap.BUILDING_NAME).is_file()
    assert not (new / bootstrap.STAMP_NAME).exists()
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
    (target / bootstrap.BUILDING_NAME).write_text("")  # even one that looks like ours
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
    (venv / bootstrap.BUILDING_NAME).write_text("")
    (venv / "half").write_text("")
    assert "half-built" in stage0.missing_message(venv, reexeced=False)
    logs: list[str] = []
    make(checkout, FakeRunner(), logs=logs).ensure()
    assert any("left half-built by an interrupted `init`" in line for line in logs)
    assert not (venv / "half").exists()
    assert not (venv / bootstrap.BUILDING_NAME).exists()
    assert not (checkout / ".venv.old").exists()
    assert make(checkout, FakeRunner()).is_current()
    # also when EnvBuilder had not even written pyvenv.cfg yet
    shutil.rmtree(venv)
    venv.mkdir()
    (venv / bootstrap.BUILDING_NAME).write_text("")
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
    assert not hasattr(bootstrap, "_write_text")
    venv = checkout / ".venv"
    assert (venv / bootstrap.STAMP_NAME).stat().st_mode & 0o777 == 0o644


def test_failed_upgrade_leaves_the_old_venv_and_removes_new(checkout: Path) -> None:
    venv = checkout / ".venv"
    make(checkout, FakeRunner()).ensure()
    (venv / "marker").write_text("old")
    old_stamp = (venv / bootstrap.STAMP_NAME).read_text()
    (checkout / "setup.cfg").write_text(SETUP_CFG.replace("click>=8.0", "click>=8.1"))
    runner = FakeRunner(fail=["click>=8.1"])
    with pytest.raises(BootstrapError) as info:
        make(checkout, runner).ensure()
    message = str(info.value)
    assert (venv / "marker").read_text() == "old"
    assert (venv / bootstrap.STAMP_NAME).read_text() == old_stamp
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
    (checkout / ".venv.new" / bootstrap.BUILDING_NAME).write_text("")
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
    assert not (venv / bootstrap.BUILDING_NAME).exists()
    assert any("out of date (setup.cfg's install_requires changed)" in line for line in logs)
    assert f"removing leftover {checkout / '.venv.new'}" in logs
    assert "click>=8.1" in runner.pip_calls[-1]


def test_a_changed_python_rebuilds(checkout: Path) -> None:
    make(checkout, FakeRunner("3.9.18")).ensure()
    logs: list[str] = []
    runner = FakeRunner("3.9.19")
    make(checkout, runner, logs=logs).ensure()
    assert any("out of date (its python changed (3.9.18 -> 3.9.19))" in line for line in logs)
    assert json.loads((checkout / ".venv" / bootstrap.STAMP_NAME).read_text())["python"] == "3.9.19"


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
    changed = bootstrap.rewrite_paths(venv, str(venv), "/final/v")
    assert sorted(p.name for p in changed) == ["activate", "pip", "pyvenv.cfg"]
    assert (venv / "bin" / "pip").read_text() == "#!/final/v/bin/python\nimport pip\n"
    assert (venv / "pyvenv.cfg").read_text() == \
        "home = /usr/bin\nversion = 3.9.18\ncommand = python3 -m venv /final/v\n"
    assert (venv / "bin" / "python3").is_symlink()


# --- getting pip without ensurepip --------------------------------------------------------------


def test_local_wheel_sources_order(tmp_path: Path) -> None:
    sources = bootstrap.local_wheel_sources(
        tmp_path / "wh", {"PIP_FIND_LINKS": f"file://{tmp_path}/a  {tmp_path}/b https://x/y"},
        {"find-links": f"{tmp_path}/c"}, [Path("/usr/share/python-wheels")])
    assert sources == [tmp_path / "wh", tmp_path / "a", tmp_path / "b", tmp_path / "c",
                       Path("/usr/share/python-wheels")]


def test_first_source_with_a_usable_wheel_wins(tmp_path: Path) -> None:
    make_wheel(tmp_path / "b", "22.0")
    make_wheel(tmp_path / "b", "23.1")
    make_wheel(tmp_path / "b", "99.0", requires_python=">=3.99")
    make_wheel(tmp_path / "c", "24.0")
    (tmp_path / "b" / "pip-23.2-py3-none-any.whl").write_text("not a zip")
    sources = [tmp_path / "missing", tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    (tmp_path / "a").mkdir()
    assert bootstrap.find_local_pip_wheel(sources, "3.9.18") == tmp_path / "b" / "pip-23.1-py3-none-any.whl"
    assert bootstrap.find_local_pip_wheel(sources[:2], "3.9.18") is None


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


def test_index_url_precedence() -> None:
    assert bootstrap.index_url({}, {}) == "https://pypi.org/simple/"
    assert bootstrap.index_url({}, {"index-url": "https://c/simple"}) == "https://c/simple"
    assert bootstrap.index_url({"PIP_INDEX_URL": "https://e/simple"},
                               {"index-url": "https://c/simple"}) == "https://e/simple"


def test_pip_config_later_files_and_install_section_win(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("[global]\nindex-url = https://a/\ncert = /a.pem\n")
    (tmp_path / "b.conf").write_text("[global]\nindex-url = https://b/\n[install]\nfind-links = /w\n")
    (tmp_path / "bad.conf").write_text("no section header\n")
    merged = bootstrap.read_pip_config([tmp_path / "a.conf", tmp_path / "bad.conf",
                                        tmp_path / "b.conf", tmp_path / "missing.conf"])
    assert merged == {"index-url": "https://b/", "cert": "/a.pem", "find-links": "/w"}
    files = bootstrap.pip_config_files({"HOME": "/h", "PIP_CONFIG_FILE": "/x.conf"})
    assert files == [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"),
                     Path("/h/.pip/pip.conf"), Path("/h/.config/pip/pip.conf"), Path("/x.conf")]


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


def _anchor(href: str, text: str, requires: str | None = None, extra: str = "") -> str:
    attrs = f' data-requires-python="{requires}"' if requires else ""
    return f'<a href="{href}"{attrs}{extra}>{text}</a><br/>'


FILES = "https://files.example"
PYPI_PAGE = "\n".join([
    "<!DOCTYPE html>",
    '<html><head><meta name="pypi:repository-version" content="1.1"></head><body>',
    "<h1>Links for pip</h1>",
    _anchor(f"{FILES}/ab/pip-9.0.3-py2.py3-none-any.whl#sha256=c3ed", "pip-9.0.3-py2.py3-none-any.whl",
            "&gt;=2.6,!=3.0.*,!=3.1.*,!=3.2.*"),
    _anchor(f"{FILES}/cd/pip-26.0.1-py3-none-any.whl#sha256=AAAA", "pip-26.0.1-py3-none-any.whl",
            "&gt;=3.9"),
    _anchor(f"{FILES}/cd/pip-26.0.1.tar.gz#sha256=bbbb", "pip-26.0.1.tar.gz", "&gt;=3.9"),
    _anchor(f"{FILES}/ef/pip-26.1-py3-none-any.whl#sha256=dddd", "pip-26.1-py3-none-any.whl",
            "&gt;=3.9", ' data-yanked="broken"'),
    _anchor(f"{FILES}/gh/pip-26.3-py3-none-any.whl#sha256=eeee", "pip-26.3-py3-none-any.whl",
            "&gt;=3.10"),
    _anchor(f"{FILES}/ij/pip-27.0b1-py3-none-any.whl#sha256=ffff", "pip-27.0b1-py3-none-any.whl",
            "&gt;=3.10"),
    _anchor("../../packages/pip-20.0-py2.py3-none-any.whl", "relative, no hash"),
    "</body></html>",
])


def test_index_page_parsing() -> None:
    links = bootstrap.parse_index_page(PYPI_PAGE, "https://pypi.example/simple/pip/")
    assert [link.filename for link in links] == [
        "pip-9.0.3-py2.py3-none-any.whl", "pip-26.0.1-py3-none-any.whl",
        "pip-26.3-py3-none-any.whl", "pip-20.0-py2.py3-none-any.whl"]  # no sdist, yanked, beta
    assert links[1].sha256 == "aaaa"
    assert links[1].url == "https://files.example/cd/pip-26.0.1-py3-none-any.whl"
    assert links[0].requires_python == ">=2.6,!=3.0.*,!=3.1.*,!=3.2.*"
    assert links[3].url == "https://pypi.example/packages/pip-20.0-py2.py3-none-any.whl"
    assert links[3].sha256 is None
    assert bootstrap.choose_pip(links, "3.9.18").filename == "pip-26.0.1-py3-none-any.whl"  # type: ignore[union-attr]
    assert bootstrap.choose_pip(links, "3.12.1").filename == "pip-26.3-py3-none-any.whl"  # type: ignore[union-attr]
    assert bootstrap.choose_pip(links[2:3], "3.9.0") is None


def test_download_verifies_the_hash(tmp_path: Path) -> None:
    wheel = b"wheel bytes"
    good = hashlib.sha256(wheel).hexdigest()
    page = f'<a href="/f/pip-24.0-py3-none-any.whl#sha256={good}">x</a>'.encode()
    pages = {"https://i/simple/pip/": page, "https://i/f/pip-24.0-py3-none-any.whl": wheel}
    saved = bootstrap.download_pip_wheel("https://i/simple/", "3.9.1", pages.__getitem__, tmp_path)
    assert saved == tmp_path / "pip-24.0-py3-none-any.whl"
    assert saved.read_bytes() == wheel
    pages["https://i/f/pip-24.0-py3-none-any.whl"] = b"tampered"
    with pytest.raises(BootstrapError, match="does not match the index's sha256"):
        bootstrap.download_pip_wheel("https://i/simple", "3.9.1", pages.__getitem__, tmp_path)


def test_file_index_is_read_from_disk(tmp_path: Path) -> None:
    (tmp_path / "simple" / "pip").mkdir(parents=True)
    (tmp_path / "files").mkdir()
    data = b"local wheel"
    (tmp_path / "files" / "pip-23.3-py3-none-any.whl").write_bytes(data)
    (tmp_path / "simple" / "pip" / "index.html").write_text(
        f'<a href="../../files/pip-23.3-py3-none-any.whl#sha256={hashlib.sha256(data).hexdigest()}">'
        "pip-23.3-py3-none-any.whl</a>")
    fetch = bootstrap.make_fetcher({}, {})
    (tmp_path / "out").mkdir()
    saved = bootstrap.download_pip_wheel(f"file://{tmp_path}/simple", "3.9.1", fetch, tmp_path / "out")
    assert saved.read_bytes() == data


@pytest.mark.parametrize(("spec", "python", "ok"), [
    (None, "3.9.1", True),
    (">=3.9", "3.9.0", True),
    (">=3.10", "3.9.18", False),
    (">=2.6,!=3.0.*,!=3.1.*,!=3.2.*", "3.1.4", False),
    (">=2.6,!=3.0.*,!=3.1.*,!=3.2.*", "3.9.4", True),
    ("<3.11", "3.11.0", False),
    ("~=3.8", "3.12.1", True),
    ("==3.9.*", "3.10.0", False),
    ("nonsense", "3.9.1", True),
])
def test_python_satisfies(spec: str | None, python: str, ok: bool) -> None:
    assert bootstrap.python_satisfies(spec, python) is ok


def test_required_distributions_skip_markers_that_do_not_apply() -> None:
    assert bootstrap.required_distributions(REQUIRES, "3.11.2") == ["supervisor", "click"]
    assert bootstrap.required_distributions(REQUIRES, "3.9.18") == ["supervisor", "click", "tomli"]
    assert bootstrap.required_distributions(['x; sys_platform == "linux"'], "3.9.1") == ["x"]
    assert bootstrap.distributions_installed(["pytest"])
    assert not bootstrap.distributions_installed(["siteboot-no-such-package-xyz"])


# --- the launcher and the real EnvBuilder (fast: no pip) ----------------------------------------


def test_launcher_finds_its_venv_also_through_a_symlink(tmp_path: Path) -> None:
    bindir = tmp_path / "somewhere" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "python").write_text('#!/bin/sh\necho "$0 $*"\n')
    (bindir / "python").chmod(0o755)
    (bindir / "siteboot").write_text(bootstrap.LAUNCHER)
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
    assert "dirname" not in bootstrap.LAUNCHER


PLANTED = 'print("planted")\n'
REAL = textwrap.dedent("""\
    import os, sys
    print("checkout", sys.flags.isolated, os.environ.get("SITEBOOT_BOOTSTRAPPED"), sys.argv[1:])
""")


@pytest.fixture
def isolated_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A real venv whose siteboot.pth points at a fake checkout, and a directory with a planted
    ``siteboot`` package (as a world-writable directory might hold)."""
    checkout = tmp_path / "checkout"
    (checkout / "siteboot").mkdir(parents=True)
    (checkout / "setup.cfg").write_text(SETUP_CFG)
    (checkout / "siteboot" / "__init__.py").write_text('__version__ = "1.2.3"\n')
    (checkout / "siteboot" / "__main__.py").write_text(REAL)
    planted = tmp_path / "planted"
    (planted / "siteboot").mkdir(parents=True)
    (planted / "siteboot" / "__init__.py").write_text("")
    (planted / "siteboot" / "__main__.py").write_text(PLANTED)
    venv = tmp_path / "v"
    bootstrap.create_venv(venv, "v")
    version = bootstrap.venv_cfg_version(venv)
    assert version is not None
    builder = Bootstrapper(checkout, venv, runner=lambda cmd: RunResult(0, ""), environ={},
                           pip_config={})
    builder.install_siteboot(venv, version)  # siteboot.pth and bin/siteboot, as init writes them
    return venv, planted


def test_launcher_ignores_a_siteboot_package_in_the_current_directory(
        isolated_venv: tuple[Path, Path]) -> None:
    venv, planted = isolated_venv
    env = dict(os.environ, PYTHONPATH=str(planted))
    env.pop("SITEBOOT_BOOTSTRAPPED", None)
    # what the launcher guards against: plain `-m` runs the planted package
    hijacked = subprocess.run([str(venv / "bin" / "python"), "-m", "siteboot"], cwd=planted,
                              capture_output=True, text=True, check=True, env=env).stdout
    assert hijacked == "planted\n"
    out = subprocess.run([str(venv / "bin" / "siteboot"), "status"], cwd=planted,
                         capture_output=True, text=True, check=True, env=env).stdout
    assert out == "checkout 1 None ['status']\n"  # the checkout, through siteboot.pth


def test_reexec_ignores_a_siteboot_package_in_the_current_directory(
        isolated_venv: tuple[Path, Path]) -> None:
    venv, planted = isolated_venv
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from siteboot import bootstrap
        os.chdir({str(planted)!r})
        os.environ["PYTHONPATH"] = {str(planted)!r}
        bootstrap.reexec(Path({str(venv / "bin" / "python")!r}), ["status", "--json"])
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=str(venv), capture_output=True,
                         text=True, check=True).stdout
    assert out == "checkout 1 1 ['status', '--json']\n"


def test_tool_env_builder_links_the_base_interpreter(tmp_path: Path) -> None:
    bootstrap.create_venv(tmp_path / "v", "shown")
    python = tmp_path / "v" / "bin" / "python"
    assert python.exists()
    assert "(shown)" in (tmp_path / "v" / "bin" / "activate").read_text()
    cfg = (tmp_path / "v" / "pyvenv.cfg").read_text()
    assert f"home = {os.path.dirname(bootstrap.base_interpreter())}" in cfg
    assert not os.path.realpath(python).startswith(os.path.realpath(sys.prefix) + os.sep)
    assert bootstrap.probe_python(python, bootstrap.run_command) == \
        ".".join(str(n) for n in sys.version_info[:3])
    assert not (tmp_path / "v" / "bin" / "pip").exists()


# --- argv and the trigger rules of __main__ -----------------------------------------------------


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


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["init", "--wheelhouse", "/w"], {}, Path("/w")),
    (["init", "--wheelhouse=rel"], {}, Path(os.path.abspath("rel"))),
    (["init"], {"SITEBOOT_WHEELHOUSE": "/e"}, Path("/e")),
    (["init", "--wheelhouse", "/w"], {"SITEBOOT_WHEELHOUSE": "/e"}, Path("/w")),
    (["init", "--", "--wheelhouse", "/w"], {}, None),
    (["init"], {}, None),
])
def test_wheelhouse_from(argv: list[str], env: dict[str, str], expected: Path | None) -> None:
    assert bootstrap.wheelhouse_from(argv, env) == expected


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


def test_tool_venv_path(tmp_path: Path) -> None:
    assert bootstrap.tool_venv_path(tmp_path, {}) == tmp_path / ".venv"
    assert bootstrap.tool_venv_path(tmp_path, {"SITEBOOT_VENV": "/x/v"}) == Path("/x/v")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []


@pytest.fixture
def fake_stage0(monkeypatch: pytest.MonkeyPatch, checkout: Path) -> Recorder:
    """run() with a fake checkout, recording re-execs, builds and CLI runs instead of doing them."""
    rec = Recorder()
    monkeypatch.setattr(bootstrap, "find_checkout", lambda: checkout)

    def reexec(python: Path, args: Sequence[str]) -> None:
        rec.calls.append(("reexec", python))
        raise SystemExit("exec'd")  # the real one never returns

    monkeypatch.setattr(bootstrap, "reexec", reexec)
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

    monkeypatch.setattr(bootstrap, "probe_python", no_process)
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
        import siteboot.__main__, siteboot.bootstrap
        heavy = ("urllib.request", "ssl", "venv", "subprocess", "shutil", "tempfile", "zipfile",
                 "ast", "html.parser", "siteboot.fsutil")
        print(sorted(m for m in heavy if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(bootstrap.__file__).parent.parent)).stdout
    assert out.strip() == "[]"


def test_stage0_imports_nothing_third_party() -> None:
    code = textwrap.dedent("""
        import sys
        import siteboot.__main__, siteboot.bootstrap
        bad = sorted(m for m in ("click", "jinja2", "psutil", "supervisor", "virtualenv", "tomli")
                     if m in sys.modules)
        print(bad)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(bootstrap.__file__).parent.parent)).stdout
    assert out.strip() == "[]"
