"""Application venvs with a fake runner: hashes, stamps, the swap as a transaction, cleanup."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from siteboot import sources, venvs
from siteboot.errors import BootstrapError
from siteboot.plan import make_plan
from siteboot.proc import RunResult
from siteboot.progress import Lines
from siteboot.site import VenvSpec, load_site
from siteboot.venvs import (
    STAMP_NAME,
    VIRTUALENV,
    build_dir,
    ensure_venv,
    ensure_venvs,
    read_stamp,
    venv_hash,
)
from tests.helpers import REPO, RecordingReporter


class FakeRunner:
    """Fakes virtualenv (makes bin/python), pip (records, or fails) and python probes."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.pip_fails: RunResult | None = None
        self.virtualenv_fails = False
        self.interrupt_pip = False
        self.version = "CPython 3.11.7"

    def __call__(self, argv: Sequence[str]) -> RunResult:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == VIRTUALENV:
            if self.virtualenv_fails:
                Path(argv[1], "bin").mkdir(parents=True)  # leaves something half-made
                return RunResult(1, "RuntimeError: failed to find interpreter\n")
            (Path(argv[1]) / "bin").mkdir(parents=True)
            (Path(argv[1]) / "bin" / "python").write_text("fake")
            return RunResult(0, "")
        if argv[1:4] == ["-I", "-m", "pip"]:
            if self.interrupt_pip:
                raise KeyboardInterrupt
            if self.pip_fails is not None:
                return self.pip_fails
            venv = Path(argv[0]).parent.parent
            (venv / "installed.txt").write_text("\n".join(argv[argv.index("--no-input") + 1:]))
            return RunResult(0, "Successfully installed\n")
        if argv[1:] == ["-c", "pass"]:
            return RunResult(0 if Path(argv[0]).exists() else 127, "")
        if argv[1] == "-c":  # interpreter description
            if argv[0].endswith("missing-python"):
                return RunResult(127, "cannot run it: No such file or directory\n")
            return RunResult(0, self.version + "\n")
        raise AssertionError(f"unexpected command {argv}")

    def kinds(self) -> list[str]:
        out = []
        for argv in self.calls:
            if argv[0] == VIRTUALENV:
                out.append("virtualenv")
            elif argv[1:4] == ["-I", "-m", "pip"]:
                out.append("pip")
            elif argv[1:] == ["-c", "pass"]:
                out.append("probe")
            else:
                out.append("describe")
        return out


def spec(*requirements: str, python: str | None = None) -> VenvSpec:
    return VenvSpec("app", list(requirements), python)


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def stable(tmp_path: Path) -> Path:
    return tmp_path / "venvs" / "app"


def builds(venv_dir: Path, name: str = "app") -> set[str]:
    return {p.name for p in venv_dir.iterdir() if p.name.startswith(f".{name}-") and p.is_dir()}


def test_a_build_reports_virtualenv_and_pip_as_steps(runner, stable):
    recorded = RecordingReporter()
    ensure_venv(spec("flask", "gunicorn"), stable, runner=runner, progress=recorded)
    assert recorded.events == [
        ("note", f"venv app: building {stable} (2 requirements)"),
        ("step", f"venv app: virtualenv with {sys.executable}"),
        ("end", f"venv app: virtualenv with {sys.executable}"),
        ("step", "venv app: pip install flask gunicorn"),
        ("end", "venv app: pip install flask gunicorn")]
    recorded.events.clear()
    ensure_venv(spec("flask", "gunicorn"), stable, runner=runner, progress=recorded)
    assert recorded.events == []  # up to date: nothing to wait for


# --- hashes and stamps ----------------------------------------------------------------------


def test_hash_depends_on_requirements_and_interpreter():
    base = venv_hash(["six==1.17.0"], "/usr/bin/python3", "CPython 3.11.7")
    assert base == venv_hash(["six==1.17.0"], "/usr/bin/python3", "CPython 3.11.7")
    assert base == venv_hash([" six==1.17.0 "], "/usr/bin/python3", "CPython 3.11.7")
    assert len(base) == 64
    assert int(base, 16) >= 0
    others = {
        venv_hash(["six==1.16.0"], "/usr/bin/python3", "CPython 3.11.7"),
        venv_hash(["six==1.17.0", "idna"], "/usr/bin/python3", "CPython 3.11.7"),
        venv_hash([], "/usr/bin/python3", "CPython 3.11.7"),
        venv_hash(["six==1.17.0"], "/opt/python3.12/bin/python3", "CPython 3.11.7"),
        venv_hash(["six==1.17.0"], "/usr/bin/python3", "CPython 3.12.1"),
    }
    assert base not in others
    assert len(others) == 5


def test_build_dir_name(tmp_path):
    digest = venv_hash([], "/x", "CPython 3.9.18")
    assert build_dir(tmp_path, "app", digest) == tmp_path / f".app-{digest[:12]}"


def test_default_interpreter_is_the_running_one(runner):
    python, version = venvs.interpreter(spec(), runner)
    assert python == sys.executable
    assert version.endswith(".".join(map(str, sys.version_info[:3])))
    assert runner.calls == []  # no subprocess for the running interpreter


def test_custom_interpreter_is_asked_for_its_version(runner, stable):
    runner.version = "CPython 3.12.1"
    result = ensure_venv(spec("six", python="/opt/py312/bin/python3"), stable, runner=runner)
    stamp = read_stamp(stable)
    assert stamp is not None
    assert stamp["python"] == "/opt/py312/bin/python3"
    assert stamp["python_version"] == "CPython 3.12.1"
    assert result.action == "created"
    virtualenv_call = next(c for c in runner.calls if c[0] == VIRTUALENV)
    assert virtualenv_call[virtualenv_call.index("--python") + 1] == "/opt/py312/bin/python3"


def test_interpreter_that_does_not_run_is_an_error(runner, stable):
    with pytest.raises(BootstrapError, match="missing-python does not run") as info:
        ensure_venv(spec(python="/nowhere/missing-python"), stable, runner=runner)
    assert info.value.hint
    assert "[venvs.app]" in info.value.hint
    assert VIRTUALENV not in [c[0] for c in runner.calls]


# --- building, skipping, swapping -------------------------------------------------------------


def test_first_build_creates_symlink_stamp_and_private_venv_dir(runner, stable):
    result = ensure_venv(spec("six", "idna>=3"), stable, runner=runner)
    assert result.action == "created"
    assert result.name == "app"
    assert result.path == stable
    assert result.seconds >= 0
    assert stable.is_symlink()
    target = os.readlink(stable)
    assert not os.path.isabs(target)
    assert target.startswith(".app-")
    assert len(target) == len(".app-") + 12
    assert (stable.parent / target).is_dir()
    assert stat.S_IMODE(stable.parent.stat().st_mode) == 0o700
    stamp = read_stamp(stable)
    assert stamp is not None
    assert target.endswith(stamp["hash"][:12])
    assert stamp["requirements"] == ["six", "idna>=3"]
    assert runner.kinds() == ["virtualenv", "pip"]  # nothing to probe yet
    pip = next(c for c in runner.calls if c[1:4] == ["-I", "-m", "pip"])
    assert pip[0] == str(stable.parent / target / "bin" / "python")  # the real dir, not the link
    assert pip[4:] == ["install", "--disable-pip-version-check", "--no-input", "six", "idna>=3"]
    assert (stable / "installed.txt").read_text() == "six\nidna>=3"


def test_wheelhouse_means_no_index(runner, stable, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    ensure_venv(spec("six"), stable, wheelhouse=wheels, runner=runner)
    pip = next(c for c in runner.calls if c[1:4] == ["-I", "-m", "pip"])
    assert pip[-4:] == ["--no-index", "--find-links", str(wheels), "six"]


def test_missing_wheelhouse_is_an_error(runner, stable, tmp_path):
    with pytest.raises(BootstrapError, match="not a directory"):
        ensure_venv(spec("six"), stable, wheelhouse=tmp_path / "nope", runner=runner)
    assert runner.calls == []


def test_no_requirements_no_pip(runner, stable):
    assert ensure_venv(spec(), stable, runner=runner).action == "created"
    assert "pip" not in runner.kinds()
    assert read_stamp(stable) is not None


def test_up_to_date_runs_only_the_probe(runner, stable):
    ensure_venv(spec("six"), stable, runner=runner)
    runner.calls.clear()
    result = ensure_venv(spec("six"), stable, runner=runner)
    assert result.action == "up to date"
    assert runner.kinds() == ["probe"]
    assert runner.calls[0][0] == str(stable / "bin" / "python")  # through the stable path


def test_python_that_no_longer_runs_is_rebuilt(runner, stable):
    ensure_venv(spec("six"), stable, runner=runner)
    (stable / "bin" / "python").unlink()
    runner.calls.clear()
    result = ensure_venv(spec("six"), stable, runner=runner)
    assert result.action == "updated"
    assert "virtualenv" in runner.kinds()
    assert "pip" in runner.kinds()
    assert (stable / "bin" / "python").exists()


def test_changed_requirements_build_a_new_dir_and_swap(runner, stable):
    ensure_venv(spec("six"), stable, runner=runner)
    first = os.readlink(stable)
    result = ensure_venv(spec("six", "idna"), stable, runner=runner)
    assert result.action == "updated"
    second = os.readlink(stable)
    assert second != first
    assert builds(stable.parent) == {first, second}  # the previous one stays for running programs
    assert (stable / "installed.txt").read_text() == "six\nidna"
    assert not [p for p in stable.parent.iterdir() if ".link-" in p.name]  # no temp symlink left


def test_switching_back_reuses_the_previous_build(runner, stable):
    ensure_venv(spec("six"), stable, runner=runner)
    first = os.readlink(stable)
    ensure_venv(spec("idna"), stable, runner=runner)
    second = os.readlink(stable)
    runner.calls.clear()
    result = ensure_venv(spec("six"), stable, runner=runner)
    assert result.action == "updated"
    assert os.readlink(stable) == first
    assert "virtualenv" not in runner.kinds()
    assert "pip" not in runner.kinds()
    assert builds(stable.parent) == {first, second}


def test_leftover_half_build_is_replaced(runner, stable):
    python, version = venvs.interpreter(spec("six"), runner)
    leftover = build_dir(stable.parent, "app", venv_hash(["six"], python, version))
    (leftover / "lib").mkdir(parents=True)  # a crash before the stamp: no stamp
    (leftover / "lib" / "junk").write_text("x")
    assert ensure_venv(spec("six"), stable, runner=runner).action == "created"
    assert os.readlink(stable) == leftover.name
    assert not (leftover / "lib" / "junk").exists()
    assert read_stamp(leftover) is not None


# --- failures leave everything as it was --------------------------------------------------


def test_failed_install_keeps_the_old_venv(runner, stable):
    ensure_venv(spec("six"), stable, runner=runner)
    old_target = os.readlink(stable)
    old_stamp = (stable / STAMP_NAME).read_text()
    output = "".join(f"pip line {n}\n" for n in range(1, 41)) + "ERROR: No matching distribution\n"
    runner.pip_fails = RunResult(1, output)
    with pytest.raises(BootstrapError) as info:
        ensure_venv(spec("six", "siteboot-no-such-package==9.9"), stable, runner=runner)
    assert os.readlink(stable) == old_target
    assert (stable / STAMP_NAME).read_text() == old_stamp
    assert builds(stable.parent) == {old_target}  # the half-built dir is gone
    message = str(info.value)
    assert "venv 'app': pip install failed (exit 1)" in message
    assert f"still points at the previous venv ({old_target})" in message
    assert "siteboot-no-such-package==9.9" in message
    assert "ERROR: No matching distribution" in message
    assert "pip line 40" in message
    assert "pip line 27" in message
    assert "pip line 26" not in message  # the last 15 lines only: one screen
    assert len(message.splitlines()) < 25
    assert "siteboot init" in message  # what to do
    log = stable.parent / ".app.pip.log"
    assert log.read_text() == output  # the whole output, kept
    runner.pip_fails = None
    ensure_venv(spec("six", "idna"), stable, runner=runner)
    assert not log.exists()  # a later success clears it


def test_failed_first_build_leaves_nothing(runner, stable, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    runner.pip_fails = RunResult(1, "ERROR: nope\n")
    with pytest.raises(BootstrapError, match="does not exist yet") as info:
        ensure_venv(spec("nope"), stable, wheelhouse=wheels, runner=runner)
    assert info.value.hint is not None
    assert str(wheels) in info.value.hint
    assert not stable.exists()
    assert not stable.is_symlink()
    assert builds(stable.parent) == set()


def test_failed_virtualenv_removes_its_dir(runner, stable):
    runner.virtualenv_fails = True
    with pytest.raises(BootstrapError, match="virtualenv could not create it"):
        ensure_venv(spec("six"), stable, runner=runner)
    assert builds(stable.parent) == set()
    assert "pip" not in runner.kinds()


def test_interrupted_install_removes_its_dir(runner, stable):
    ensure_venv(spec("six"), stable, runner=runner)
    old_target = os.readlink(stable)
    runner.interrupt_pip = True
    with pytest.raises(KeyboardInterrupt):
        ensure_venv(spec("idna"), stable, runner=runner)
    assert os.readlink(stable) == old_target
    assert builds(stable.parent) == {old_target}


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_real_directory_at_stable_path_is_refused(runner, stable, kind):
    stable.parent.mkdir(parents=True)
    if kind == "directory":
        stable.mkdir()
        (stable / "precious.txt").write_text("data")
    else:
        stable.write_text("data")
    with pytest.raises(BootstrapError, match=f"is a real {kind}") as info:
        ensure_venv(spec("six"), stable, runner=runner)
    assert info.value.hint is not None
    assert "move it away" in info.value.hint
    assert not stable.is_symlink()
    assert (stable / "precious.txt" if kind == "directory" else stable).read_text() == "data"
    assert runner.calls == []


# --- cleanup ----------------------------------------------------------------------------------


def test_cleanup_keeps_current_and_previous_only(runner, stable):
    targets = []
    for requirements in (["a"], ["b"], ["c"], ["d"]):
        ensure_venv(spec(*requirements), stable, runner=runner)
        targets.append(os.readlink(stable))
    assert builds(stable.parent) == {targets[3], targets[2]}


def test_cleanup_leaves_other_venvs_and_strangers_alone(runner, tmp_path):
    venv_dir = tmp_path / "venvs"
    other = venv_dir / ".app-server-0123456789ab"  # a build of venv "app-server", not of "app"
    stranger = venv_dir / ".app-notahash"
    for path in (other, stranger):
        path.mkdir(parents=True)
    (venv_dir / "notes.txt").write_text("mine")
    for requirements in (["a"], ["b"], ["c"]):
        ensure_venv(spec(*requirements), venv_dir / "app", runner=runner)
    assert other.is_dir()
    assert stranger.is_dir()
    assert (venv_dir / "notes.txt").exists()


def test_existing_venv_dir_is_not_chmodded(runner, tmp_path):
    venv_dir = tmp_path / "venvs"
    venv_dir.mkdir(mode=0o755)
    os.chmod(venv_dir, 0o755)
    ensure_venv(spec(), venv_dir / "app", runner=runner)
    assert stat.S_IMODE(venv_dir.stat().st_mode) == 0o755


# --- the plan -------------------------------------------------------------------------------


SITE = """
[site]
name = "t"
venv_dir = "{venv_dir}"

[instances.main]
port = {{ dev = 40001, staging = 40002, prod = 40003 }}

[instances.theirs]
user = "siteboot-nobody-else"
port = {{ dev = 40011, staging = 40012, prod = 40013 }}

[venvs.app]
requirements = ["six"]

[venvs.tools]
requirements = []

[venvs.other]
requirements = ["idna"]

[programs.web]
instance = "main"
venv = "app"
command = "{{venv}}/bin/python -m web --port {{port}}"
port = {{ dev = 41001, staging = 41002, prod = 41003 }}

[programs.worker]
instance = "main"
venv = "app"
command = "{{venv}}/bin/python -m worker"

[programs.cron]
instance = "main"
venv = "tools"
command = "{{venv}}/bin/python -m cron"

[programs.plain]
instance = "main"
command = "sleep 100"

[programs.foreign]
instance = "theirs"
venv = "other"
command = "{{venv}}/bin/python -m foreign"
"""


def test_ensure_venvs_builds_each_owned_venv_once(runner, write_site, tmp_path):
    venv_dir = tmp_path / "venvs"
    plan = make_plan(load_site(write_site(SITE.format(venv_dir=venv_dir))), "dev")
    messages: list[str] = []
    results = ensure_venvs(plan, runner=runner, progress=Lines(messages.append))
    assert [(r.name, r.path, r.action) for r in results] == [
        ("app", venv_dir / "app", "created"),
        ("tools", venv_dir / "tools", "created"),
    ]
    assert not (venv_dir / "other").exists()  # its instance belongs to someone else
    assert runner.kinds().count("virtualenv") == 2
    assert len(messages) == 2
    assert "venv app: building" in messages[0]
    web = plan.instance("main").program("web")
    assert web is not None
    assert web.venv == venv_dir / "app"
    assert web.command.startswith(f"{venv_dir / 'app'}/bin/python")
    runner.calls.clear()
    again = ensure_venvs(plan, runner=runner)
    assert [r.action for r in again] == ["up to date", "up to date"]
    assert runner.kinds() == ["probe", "probe"]


def test_failure_names_the_site_file(runner, write_site, tmp_path):
    path = write_site(SITE.format(venv_dir=tmp_path / "venvs"))
    plan = make_plan(load_site(path), "dev")
    runner.pip_fails = RunResult(1, "ERROR: boom\n")
    with pytest.raises(BootstrapError) as info:
        ensure_venvs(plan, runner=runner)
    assert info.value.hint is not None
    assert f"[venvs.app] in {path}" in info.value.hint


def test_importing_does_not_import_virtualenv():
    code = "import sys, siteboot.venvs; sys.exit('virtualenv' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False)
    assert result.returncode == 0


# --- local paths: new code, new build ------------------------------------------------------


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A site root holding a local package."""
    base = tmp_path / "root"
    (base / "pkg" / "pkg").mkdir(parents=True)
    (base / "pkg" / "pyproject.toml").write_text("[project]\nname = 'pkg'\nversion = '1'\n")
    (base / "pkg" / "pkg" / "__init__.py").write_text("CODE = 1\n")
    return base


def test_a_local_package_is_installed_from_a_copy_made_for_the_build(runner, stable, checkout):
    first = ensure_venv(spec("six", "./pkg"), stable, runner=runner, base=checkout)
    assert first.action == "created"
    [pip] = [argv for argv in runner.calls if argv[1:4] == ["-I", "-m", "pip"]]
    installed = pip[pip.index("--no-input") + 1:]
    assert installed[0] == "six"
    assert installed[1].startswith(f"{stable.parent}/.app-src-")  # the copy, not the checkout
    assert installed[1].endswith("/pkg")
    assert not [p for p in stable.parent.iterdir() if "-src-" in p.name]  # removed after the build
    assert not (checkout / "pkg" / "build").exists()  # nothing written into the checkout
    stamp = read_stamp(stable)
    assert stamp is not None
    assert set(stamp["contents"]) == {"./pkg"}
    assert first.build == stable.parent / os.readlink(stable)


def test_new_code_is_a_new_build_and_the_same_code_is_not(runner, stable, checkout):
    first = ensure_venv(spec("./pkg"), stable, runner=runner, base=checkout)
    assert ensure_venv(spec("./pkg"), stable, runner=runner, base=checkout).action == "up to date"
    (checkout / "pkg" / "pkg" / "__init__.py").write_text("CODE = 2\n")
    second = ensure_venv(spec("./pkg"), stable, runner=runner, base=checkout)
    assert (second.action, second.previous) == ("updated", first.build)
    assert second.build != first.build
    (checkout / "pkg" / "pkg" / "__init__.py").write_text("CODE = 1\n")  # back: the first build
    runner.calls.clear()
    third = ensure_venv(spec("./pkg"), stable, runner=runner, base=checkout)
    assert third.build == first.build
    assert "pip" not in runner.kinds()


def test_code_changed_while_it_is_copied_is_built_as_copied(runner, stable, checkout, monkeypatch):
    source = checkout / "pkg" / "pkg" / "__init__.py"
    real_snapshot = sources.snapshot

    def edit_then_copy(requirements: list[sources.Requirement], base: Path,
                       into: Path) -> sources.Snapshot:
        source.write_text("CODE = 3\n")  # someone pulls the checkout mid-init
        return real_snapshot(requirements, base, into)

    monkeypatch.setattr(sources, "snapshot", edit_then_copy)
    result = ensure_venv(spec("./pkg"), stable, runner=runner, base=checkout)
    monkeypatch.undo()
    # labelled with what it holds: the next init sees CODE = 3 and has nothing to do
    assert ensure_venv(spec("./pkg"), stable, runner=runner, base=checkout).action == "up to date"
    assert result.build == stable.parent / os.readlink(stable)


def test_a_refused_local_path_names_the_venv(runner, stable, checkout):
    with pytest.raises(BootstrapError, match=r"venv 'app': requirement '../x' names .* outside"):
        ensure_venv(spec("../x"), stable, runner=runner, base=checkout)


def test_local_paths_are_relative_to_the_site_root(runner, tmp_path, checkout):
    text = SITE.format(venv_dir=tmp_path / "venvs").replace('requirements = ["six"]',
                                                            'requirements = ["./pkg"]', 1)
    (checkout / "sites").mkdir()
    (checkout / "sites" / "t.toml").write_text(text)
    (tmp_path / "t.toml").write_text(text)
    outside = make_plan(load_site(tmp_path / "t.toml"), "dev")
    with pytest.raises(BootstrapError, match=f"{tmp_path}/pkg does not exist"):  # its own folder
        ensure_venvs(outside, runner=runner, root=checkout)
    inside = make_plan(load_site(checkout / "sites" / "t.toml"), "dev")
    assert ensure_venvs(inside, runner=runner, root=checkout)[0].action == "created"


# --- which build each program runs on -------------------------------------------------------


class FakeProcess:
    def __init__(self, pid: int, environ: dict[str, str]) -> None:
        self.pid = pid
        self._environ = environ

    def environ(self) -> dict[str, str]:
        return self._environ


class FakeSupervisord:
    def __init__(self, children: list[FakeProcess]) -> None:
        self._children = children

    def children(self) -> list[FakeProcess]:
        return self._children


def test_programs_name_the_build_they_start_on(runner, write_site, tmp_path):
    venv_dir = tmp_path / "venvs"
    plan = make_plan(load_site(write_site(SITE.format(venv_dir=venv_dir))), "dev")
    inst = plan.instance("main")
    assert venvs.program_builds(inst) == {"web": None, "worker": None, "cron": None}
    assert venvs.with_builds(inst) == inst  # nothing built yet: nothing named
    ensure_venvs(plan, runner=runner)
    app = venv_dir / os.readlink(venv_dir / "app")
    assert venvs.program_builds(inst)["web"] == app
    named = venvs.with_builds(inst)
    web, plain = named.program("web"), named.program("plain")
    assert web is not None
    assert plain is not None
    assert web.environment[venvs.BUILD_ENV] == str(app)
    assert venvs.BUILD_ENV not in plain.environment
    assert inst.program("web").environment == {}  # type: ignore[union-attr]  # a copy


def test_venv_changes_are_processes_on_another_build(runner, write_site, tmp_path):
    venv_dir = tmp_path / "venvs"
    plan = make_plan(load_site(write_site(SITE.format(venv_dir=venv_dir))), "dev")
    inst = plan.instance("main")
    ensure_venvs(plan, runner=runner)
    app = venv_dir / os.readlink(venv_dir / "app")
    tools = venv_dir / os.readlink(venv_dir / "tools")
    supervisord = FakeSupervisord([
        FakeProcess(11, {"SUPERVISOR_PROCESS_NAME": "web", venvs.BUILD_ENV: str(app)}),
        FakeProcess(12, {"SUPERVISOR_PROCESS_NAME": "worker", venvs.BUILD_ENV: "/old/.app-x"}),
        FakeProcess(13, {"SUPERVISOR_PROCESS_NAME": "cron"}),  # from before builds were named
        FakeProcess(14, {"SUPERVISOR_PROCESS_NAME": "plain"}),
        FakeProcess(15, {}),
    ])
    changes = venvs.venv_changes(inst, supervisord)
    assert [(c.process, c.pid, c.was, c.now) for c in changes] == [
        ("worker", 12, "/old/.app-x", app), ("cron", 13, None, tools)]
    assert changes[0].describe(restarted=True) == (
        f"worker: restarted on venv app's new build {app.name} (was .app-x)")
    assert "siteboot restart cron" in changes[1].describe(restarted=False)
