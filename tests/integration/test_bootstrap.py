"""Stage 0 for real: a fresh clone, a python without any of siteboot's dependencies, real pip.

Each build installs the dependencies into a new venv (pip's cache keeps that to seconds).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from siteboot import __version__
from siteboot.bootstrap.locate import BUILDING_NAME, STAMP_NAME

REPO = Path(__file__).resolve().parent.parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")
BOGUS = "siteboot-no-such-package-xyz==9.9"
# What builds the tool venv and starts nothing: `init --no-start` of the clone's default site
# (its sites/default names `build`, whose runtime dir is the test's own). `init --help` does not
# build: stage 0 answers it.
BUILD = ("init", "--no-start")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs /usr/bin/python3 (with venv)"),
]


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The checkout's sources as a fresh clone has them (no venv, no build artefacts), with a
    default site of the test's own (`build`: one instance, nothing that may collide)."""
    target = tmp_path / "clone"
    target.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("siteboot", "templates", "sites"):
        shutil.copytree(REPO / folder, target / folder, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, target / name)
    (target / "sites" / "build.toml").write_text(f"""
[site]
envs = ["dev"]
runtime_dir = "{tmp_path}/run"
state_dir = "{tmp_path}/state"

[instances.main]
port = {{ dev = 40001 }}

[programs.idle]
instance = "main"
command = "sleep 3600"
""")
    (target / "sites" / "default").write_text("build\n")
    return target


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """A python with the standard library only: click, jinja2 & co. cannot be imported."""
    path = tmp_path / "bare"
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import click"], capture_output=True, check=False)
    assert probe.returncode != 0, "the bare python must not have siteboot's dependencies"
    return python


def environment(venv: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SITEBOOT_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["SITEBOOT_VENV"] = str(venv)
    env.update(extra)
    return env


def siteboot(python: Path, clone: Path, env: dict[str, str],
             *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([str(python), "-m", "siteboot", *args], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=280, check=False)
    return result, time.monotonic() - started


def venv_text_files(venv: Path) -> dict[Path, str]:
    files = [venv / "pyvenv.cfg", *sorted((venv / "bin").iterdir())]
    texts = {}
    for path in files:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if b"\0" not in data:
                texts[path] = data.decode("utf-8", "replace")
    return texts


def imports(python: Path, module: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], capture_output=True,
                          check=False, env=environment(Path("/nonexistent"))).returncode == 0


# What `siteboot status` must not pay for: the CLI framework, rendering, venv building, process
# tables, supervisor itself, and stage 0's build code.
NOT_ON_THE_STATUS_PATH = ("click", "jinja2", "virtualenv", "psutil", "supervisor", "difflib",
                          "siteboot.bootstrap.build", "siteboot.bootstrap.pipsource",
                          "siteboot.bootstrap.stamp", "siteboot.render", "siteboot.instances",
                          "siteboot.venvs", "subprocess", "tempfile", "urllib.request", "ssl")


def assert_status_imports_little(venv: Path, clone: Path, env: dict[str, str]) -> None:
    """`bin/siteboot status`, as operators and monitoring run it, imports only what it uses."""
    launcher = (venv / "bin" / "siteboot").read_text()
    assert launcher.rstrip().endswith('exec "$bindir/python" -I -m siteboot "$@"'), launcher
    plain = subprocess.run([str(venv / "bin" / "siteboot"), "status", "--site", "nope"],
                           cwd=clone, env=env, capture_output=True, text=True, check=False)
    assert plain.returncode == 3, plain.stderr  # unknown: no such site
    # what the launcher execs, with -X importtime (with -I, PYTHONPROFILEIMPORTTIME is ignored)
    traced = subprocess.run([str(venv / "bin" / "python"), "-X", "importtime", "-I", "-m", "siteboot",
                             "status", "--site", "nope"], cwd=clone, env=env, capture_output=True,
                            text=True, check=False)
    assert traced.returncode == 3, traced.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines()
                if line.startswith("import time:")}
    assert "siteboot.cli.fast" in imported  # the fast path ran, and was traced
    heavy = sorted(name for name in imported
                   if any(name == m or name.startswith(m + ".") for m in NOT_ON_THE_STATUS_PATH))
    assert heavy == [], heavy


def test_help_and_version_on_a_fresh_clone_build_nothing(clone: Path, bare: Path,
                                                        tmp_path: Path) -> None:
    """Before `init`: stage 0 answers --help and --version itself, without a venv or pip."""
    venv = tmp_path / "tool-venv"
    env = environment(venv, HOME=str(tmp_path / "home"))
    listing, _ = siteboot(bare, clone, env, "--help")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.startswith("Usage: siteboot [OPTIONS] COMMAND [ARGS]...")
    assert "  logs        Every program's stdout and stderr" in listing.stdout
    version, _ = siteboot(bare, clone, env, "--version")
    assert version.stdout.strip() == f"siteboot, version {__version__}"
    init_help, _ = siteboot(bare, clone, env, "init", "--help")
    assert init_help.returncode == 0, init_help.stderr
    assert "--no-start" in init_help.stdout
    assert not os.path.lexists(venv)
    assert not (tmp_path / "home").exists()
    assert not (tmp_path / "run").exists()
    # quick: it starts no process and imports no build code (only whether the dependencies are
    # installed is looked up, to give click's fuller help where they are)
    traced = subprocess.run([str(bare), "-X", "importtime", "-m", "siteboot", "--help"], cwd=clone,
                            env=env, capture_output=True, text=True, check=False)
    assert traced.returncode == 0, traced.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines()
                if line.startswith("import time:")}
    assert "siteboot.usage" in imported
    assert not imported & {"siteboot.bootstrap.build", "subprocess", "venv", "ensurepip",
                           "siteboot.cli.commands", "click"}


def test_fresh_clone_init_update_and_failed_upgrade(clone: Path, bare: Path, tmp_path: Path) -> None:
    venv = tmp_path / "tool-venv"
    env = environment(venv)

    # 1. the first run builds the venv, then re-executes `init --no-start` inside it: the
    #    config rendered, nothing started
    first, first_time = siteboot(bare, clone, env, *BUILD)
    assert first.returncode == 0, first.stderr
    assert first.stdout.rstrip().endswith("nothing started (--no-start)")
    assert (tmp_path / "run" / "main" / "supervisord-main.conf").is_file()
    assert not (tmp_path / "run" / "main" / "supervisord.pid").exists()
    assert "siteboot: creating tool venv at" in first.stderr
    python = venv / "bin" / "python"
    assert imports(python, "supervisor")
    assert imports(python, "siteboot.bootstrap.build")  # via siteboot.pth
    assert_status_imports_little(venv, clone, env)
    stamp = (venv / STAMP_NAME).read_text()
    assert str(clone) in stamp
    assert not (venv / BUILDING_NAME).exists()
    assert not (tmp_path / "tool-venv.new").exists()  # built there, then renamed
    assert "tool-venv.new" not in (venv / "pyvenv.cfg").read_text()

    # 2. the second run has nothing to do: no pip
    second, second_time = siteboot(bare, clone, env, *BUILD)
    assert second.returncode == 0, second.stderr
    assert "nothing started" in second.stdout
    assert "up to date" in second.stderr
    assert "installing" not in second.stderr
    assert second_time < first_time / 3, (first_time, second_time)

    # 3. other commands re-execute into the venv; the launcher works from anywhere
    version, _ = siteboot(bare, clone, env, "--version")
    assert version.returncode == 0, version.stderr
    assert __version__ in version.stdout
    launched = subprocess.run([str(venv / "bin" / "siteboot"), "--version"], cwd="/", env=env,
                              capture_output=True, text=True, check=False)
    assert launched.returncode == 0, launched.stderr
    assert __version__ in launched.stdout

    # ... and neither it nor the re-exec runs a `siteboot` package from the current directory
    planted = tmp_path / "world-writable"
    (planted / "siteboot").mkdir(parents=True)
    (planted / "siteboot" / "__init__.py").write_text("")
    (planted / "siteboot" / "__main__.py").write_text('print("planted")\n')
    hostile = dict(env, PYTHONPATH=str(planted))
    launched = subprocess.run([str(venv / "bin" / "siteboot"), "--version"], cwd=planted,
                              env=hostile, capture_output=True, text=True, check=False)
    assert launched.returncode == 0, launched.stderr
    assert "planted" not in launched.stdout
    assert __version__ in launched.stdout
    code = (f"import os, sys; sys.path.insert(0, {str(clone)!r}); os.chdir({str(planted)!r}); "
            "from siteboot.__main__ import run; run(['--version'])")
    reexeced = subprocess.run([str(bare), "-c", code], cwd=tmp_path, env=hostile,
                              capture_output=True, text=True, check=False)
    assert reexeced.returncode == 0, reexeced.stderr
    assert "planted" not in reexeced.stdout
    assert __version__ in reexeced.stdout

    # 4. a changed install_requires rebuilds at <venv>.new and swaps it in, paths rewritten
    setup_cfg = clone / "setup.cfg"
    original = setup_cfg.read_text()
    setup_cfg.write_text(original.replace("    click>=8.0\n", "    click>=8.0.0\n"))
    upgraded, _ = siteboot(bare, clone, env, *BUILD)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "out of date (setup.cfg's install_requires changed)" in upgraded.stderr
    assert not (tmp_path / "tool-venv.new").exists()
    assert not (tmp_path / "tool-venv.old").exists()
    leftovers = [p.name for p, text in venv_text_files(venv).items() if "tool-venv.new" in text]
    assert leftovers == []
    pip = subprocess.run([str(venv / "bin" / "pip"), "--version"], capture_output=True, text=True,
                         check=False, env=environment(venv))
    assert pip.returncode == 0, pip.stderr  # its shebang points at the final path
    assert "click>=8.0.0" in (venv / STAMP_NAME).read_text()

    # 5. an upgrade that cannot be installed leaves the working venv alone
    stamp = (venv / STAMP_NAME).read_text()
    setup_cfg.write_text(original.replace("    psutil>=5.9\n", f"    psutil>=5.9\n    {BOGUS}\n"))
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    failed, _ = siteboot(bare, clone, env, *BUILD, "--wheelhouse", str(empty))
    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, failed.stderr
    assert "pip could not install siteboot's dependencies" in errors[0]
    assert len(failed.stderr.splitlines()) <= 25, failed.stderr
    assert f"the previous tool venv at {venv} is unchanged and still works" in failed.stderr
    assert f"hint: put a wheel for every requirement (and their dependencies) into {empty}" \
        in failed.stderr
    assert "nothing started" not in failed.stdout
    assert not (tmp_path / "tool-venv.new").exists()
    assert (venv / STAMP_NAME).read_text() == stamp
    assert imports(python, "supervisor")

    # ... and other commands now say what to do, in one line (--help and --version still answer)
    stale, _ = siteboot(bare, clone, env, "status")
    assert stale.returncode == 2
    assert stale.stderr.strip().splitlines() == [
        f"error: the tool venv at {venv} is out of date or broken; "
        "run `python3 -m siteboot init` to update it"]


def test_a_killed_init_is_cleaned_up_by_the_next_one(clone: Path, bare: Path,
                                                     tmp_path: Path) -> None:
    """SIGKILL (OOM, a CI timeout) in the middle of the first build: the next init succeeds."""
    venv = tmp_path / "tool-venv"
    new = tmp_path / "tool-venv.new"
    proc = subprocess.Popen([str(bare), "-m", "siteboot", *BUILD], cwd=clone,
                            env=environment(venv), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (new / "pyvenv.cfg").exists() and time.monotonic() < deadline \
                and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.3)  # into ensurepip or pip
        assert proc.poll() is None, "the build ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # init and the pip it runs
        proc.wait()
    assert not os.path.lexists(venv)
    assert (new / BUILDING_NAME).is_file()
    assert not (new / STAMP_NAME).exists()

    result, _ = siteboot(bare, clone, environment(venv), *BUILD)
    assert result.returncode == 0, result.stderr
    assert "nothing started" in result.stdout
    assert f"removing leftover {new}" in result.stderr
    assert not new.exists()
    assert (venv / STAMP_NAME).is_file()
    assert not (venv / BUILDING_NAME).exists()
    assert imports(venv / "bin" / "python", "supervisor")


def test_without_ensurepip_pip_comes_from_a_wheel(clone: Path, bare: Path, tmp_path: Path) -> None:
    hidden = tmp_path / "hide"
    (hidden / "ensurepip").mkdir(parents=True)
    (hidden / "ensurepip" / "__init__.py").write_text('raise ImportError("hidden for test")\n')
    venv = tmp_path / "tool-venv"
    result, _ = siteboot(bare, clone, environment(venv, PYTHONPATH=str(hidden)), *BUILD)
    assert result.returncode == 0, result.stderr
    assert "nothing started" in result.stdout
    assert "ensurepip is not available (Debian without python3-venv?); installed pip from " \
        in result.stderr
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"],
                         capture_output=True, text=True, check=False, env=environment(venv))
    assert pip.returncode == 0, pip.stderr
    assert str(venv) in pip.stdout
    assert imports(venv / "bin" / "python", "click")


def test_bare_python_init_brings_a_site_up_and_a_second_run_is_a_no_op(
        clone: Path, bare: Path, tmp_path: Path) -> None:
    """The README quick start end to end, on a site with free ports and an app venv."""
    import json
    import tempfile

    from tests.helpers import free_ports, kill_all, processes_under

    base = Path(tempfile.mkdtemp(prefix="sb-", dir="/tmp"))
    services, workers, web = free_ports(3)
    site = clone / "sites" / "e2e.toml"
    site.write_text(f"""
[site]
envs = ["dev"]
runtime_dir = "{base}/run"
state_dir = "{base}/state"
venv_dir = "{base}/venvs"

[instances.services]
port = {{ dev = {services} }}

[instances.workers]
port = {{ dev = {workers} }}

[venvs.app]
requirements = []

[programs.web]
instance = "services"
command = "{{python}} -m siteboot.demo serve --port {{port}}"
port = {{ dev = {web} }}
startsecs = 1

[programs.job]
instance = "workers"
venv = "app"
command = "{{venv}}/bin/python -c 'import time; time.sleep(3600)'"
startsecs = 1
""")
    env = environment(tmp_path / "tool-venv", SITEBOOT_SITE="e2e", HOME=str(base / "home"))
    try:
        first, first_time = siteboot(bare, clone, env, "init", "--env", "dev")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "services: started" in first.stdout
        assert "venv app: created" in first.stdout
        assert first.stdout.count("RUNNING") == 2

        second, second_time = siteboot(bare, clone, env, "init", "--env", "dev")
        assert second.returncode == 0, second.stderr
        assert second.stdout.count("already running: nothing to do") == 2
        assert "venv app: up to date" in second.stdout
        assert second_time < first_time / 3

        status, _ = siteboot(bare, clone, env, "status", "--json")
        assert status.returncode == 0
        assert json.loads(status.stdout)["ok"] is True

        down, _ = siteboot(bare, clone, env, "down")
        assert down.returncode == 0, down.stderr
        assert processes_under(base) == []
    finally:
        siteboot(bare, clone, env, "down")
        leftovers = processes_under(base)
        kill_all(leftovers)
        shutil.rmtree(base, ignore_errors=True)
