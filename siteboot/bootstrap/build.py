"""Building the tool venv: ``python3 -m siteboot init`` outside it, in a checkout.

The tool venv (``<checkout>/.venv``, or ``$SITEBOOT_VENV``) is made in four steps:

1. ``venv.EnvBuilder`` (no pip), then pip from ``ensurepip``; where ``ensurepip`` is missing
   (Debian without python3-venv) from a pip wheel on the machine or the package index (see
   ``pipsource``);
2. ``pip install`` of ``setup.cfg``'s ``install_requires``, as written (markers included);
3. ``siteboot.pth`` (the checkout path) in its site-packages and a relocatable ``bin/siteboot``;
4. ``siteboot-stamp.json`` (see ``stamp``): when it matches, ``init`` builds nothing.

Every build, the first one too, happens at ``<venv>.new``, which carries a ``siteboot-building``
marker from the moment it is created until the stamp is written into it. Only when everything
succeeded are its absolute paths rewritten to the final ones, the stamp written and the venv
moved in place: a first build is a rename; an existing venv is moved to ``<venv>.old`` first and
deleted after. A failed build leaves the previous venv untouched and working, and one that was
killed half-way leaves a ``<venv>.new`` that the next ``init`` recognises by its marker and
removes. ``init`` deletes nothing that carries neither the marker nor a stamp.

Every subprocess goes through one injectable ``Runner`` so tests can fake pip and ensurepip.
"""

from __future__ import annotations

import os
import re
import sys
import time
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from siteboot import proc
from siteboot.bootstrap.locate import (
    BUILDING_NAME,
    ENV_VENV,
    INIT_COMMAND,
    PTH_NAME,
    STAMP_NAME,
    debug_enabled,
    init_command,
    log,
    venv_python,
)
from siteboot.bootstrap.pipsource import (
    SYSTEM_WHEEL_DIRS,
    Fetcher,
    download_pip_wheel,
    find_local_pip_wheel,
    index_url,
    local_wheel_sources,
    make_fetcher,
    pip_config_files,
    read_pip_config,
    redact,
)
from siteboot.bootstrap.requirements import read_requirements, required_distributions
from siteboot.bootstrap.stamp import (
    interpreter_moved,
    made_by_siteboot,
    read_metadata_version,
    read_stamp,
    stamp_matches,
    venv_python_version,
    write_stamp,
)
from siteboot.errors import BootstrapError
from siteboot.proc import RunResult, last_lines
from siteboot.progress import SILENT, Reporter


def offline_hint() -> str:
    return ("on a node without network access pass --wheelhouse DIR (a folder of wheels, made "
            "elsewhere with `pip download -d DIR <requirements>`), or set PIP_FIND_LINKS / "
            f"PIP_INDEX_URL; then rerun `{init_command()}`")
PIP_TAIL_LINES = 12

# The shell launcher: finds the venv from its own location, so the venv may move. `-I`: no
# `siteboot` package from the current directory (nor PYTHONPATH) can take the checkout's place.
LAUNCHER = """\
#!/bin/sh
# siteboot launcher, written by `python3 -m siteboot init`: runs siteboot with the python of
# the virtualenv this file lives in, wherever that is.
self=$0
if [ -L "$self" ]; then
    self=$(readlink -f -- "$self" 2>/dev/null || printf '%s' "$self")
fi
case $self in
    */*) bindir=${self%/*} ;;
    *) bindir=. ;;
esac
exec "$bindir/python" -I -m siteboot "$@"
"""

_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


# --- subprocesses -------------------------------------------------------------------------------


if TYPE_CHECKING:  # (collections.abc generics cannot be subscripted at run time before 3.9)
    Runner = Callable[[Sequence[str]], RunResult]


def run_command(cmd: Sequence[str]) -> RunResult:
    """Run ``cmd`` with stdout and stderr captured together (streamed too with SITEBOOT_DEBUG).

    PYTHONPATH and PYTHONHOME are dropped: they would make pip see (and skip) packages that
    live outside the venv. Everything else, PIP_* included, is passed on.
    """
    return proc.run_command(cmd, env=proc.clean_env(), echo=sys.stderr if debug_enabled() else None)


def tail(output: str, count: int = PIP_TAIL_LINES) -> str:
    return "\n".join(f"  | {line}" for line in last_lines(output, count))


def probe_python(python: Path, runner: Runner) -> str | None:
    """The version of a venv's python (``3.11.2``), or None when it does not run."""
    if not os.path.exists(python):  # follows symlinks: a dangling one after a python upgrade
        return None
    result = runner([str(python), "-I", "-c", _PROBE])
    text = result.output.strip().splitlines()[-1:] if result.output.strip() else []
    if result.returncode != 0 or not text or not re.match(r"^\d+\.\d+\.\d+$", text[0]):
        return None
    return text[0]


# --- venvs --------------------------------------------------------------------------------------


def base_interpreter() -> str:
    """The real interpreter behind this one: a tool venv built from inside another venv must
    not depend on that venv (Python < 3.11 reports the venv's own python as the base)."""
    base = getattr(sys, "_base_executable", "") or sys.executable
    if sys.prefix == sys.base_prefix:
        return base
    inside = os.path.realpath(sys.prefix) + os.sep
    if base and not os.path.realpath(os.path.dirname(base)).startswith(inside) \
            and os.path.exists(base):
        return base
    for name in (f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3", "python"):
        candidate = os.path.join(sys.base_prefix, "bin", name)
        if os.path.exists(candidate):
            return candidate
    return base


def create_venv(target: Path, prompt: str) -> None:
    """``EnvBuilder(with_pip=False, symlinks=True)`` whose python links to the base interpreter."""
    import venv

    base = base_interpreter()

    class ToolEnvBuilder(venv.EnvBuilder):
        def ensure_directories(self, env_dir: str | bytes | os.PathLike[str] | os.PathLike[bytes],
                               ) -> types.SimpleNamespace:
            context = super().ensure_directories(env_dir)
            if os.path.abspath(base) != os.path.abspath(context.executable):
                context.executable = base
                context.python_dir, context.python_exe = os.path.split(os.path.abspath(base))
                context.env_exe = os.path.join(context.bin_path, context.python_exe)
                context.env_exec_cmd = context.env_exe
            return context

    ToolEnvBuilder(with_pip=False, symlinks=True, prompt=prompt).create(str(target))


def have_ensurepip() -> bool:
    try:
        import ensurepip  # noqa: F401
    except ImportError:
        return False
    return True


def ensurepip_wheels() -> list[Path]:
    """The wheels ``ensurepip`` installs (pip, and setuptools where it bundles it), or [] where
    it bundles no pip of its own (Debian's reads them from elsewhere)."""
    try:
        import ensurepip
    except ImportError:
        return []
    folder = Path(ensurepip.__file__).parent / "_bundled"
    wheels = [w for w in sorted(folder.glob("*.whl")) if w.name.split("-")[0] in _ENSUREPIP_NAMES]
    return wheels if any(w.name.startswith("pip-") for w in wheels) else []


_ENSUREPIP_NAMES = ("pip", "setuptools")


def rewrite_paths(venv_dir: Path, old: str, new: str) -> list[Path]:
    """Replace ``old`` by ``new`` in the text files of ``bin/`` (shebangs, activate scripts) and
    in ``pyvenv.cfg``; binaries and symlinks are left alone. Returns the files changed."""
    before, after = old.encode(), new.encode()
    candidates = [venv_dir / "pyvenv.cfg"]
    bindir = venv_dir / "bin"
    if bindir.is_dir():
        candidates += sorted(bindir.iterdir())
    changed = []
    for path in candidates:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data or before not in data:
            continue
        path.write_bytes(data.replace(before, after))  # in place: mode and owner are kept
        changed.append(path)
    return changed


def _remove(path: Path) -> None:
    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            shutil.rmtree(path)  # once more, this time reporting what is in the way


class Bootstrapper:
    """Makes the tool venv for ``checkout`` at ``venv_dir`` current. Every seam is a parameter."""

    system_wheel_dirs: Sequence[Path] = SYSTEM_WHEEL_DIRS

    def __init__(self, checkout: Path, venv_dir: Path, *, wheelhouse: Path | None = None,
                 runner: Runner = run_command,
                 environ: Mapping[str, str] | None = None,
                 ensurepip_available: Callable[[], bool] = have_ensurepip,
                 make_venv: Callable[[Path, str], None] = create_venv,
                 bundled_wheels: Callable[[], list[Path]] = ensurepip_wheels,
                 fetcher: Fetcher | None = None,
                 pip_config: Mapping[str, str] | None = None,
                 log: Callable[[str], None] = log, progress: Reporter = SILENT) -> None:
        self.checkout = checkout
        self.venv = venv_dir
        self.wheelhouse = wheelhouse
        self.runner = runner
        self.environ = os.environ if environ is None else environ
        self.ensurepip_available = ensurepip_available
        self.make_venv = make_venv
        self.bundled_wheels = bundled_wheels
        self.pip_config = (read_pip_config(pip_config_files(self.environ)) if pip_config is None
                           else pip_config)
        self.fetcher = fetcher or make_fetcher(self.environ, self.pip_config)
        self.log = log
        self.progress = progress  # the long steps, shown live on a terminal
        self.requires = read_requirements(checkout / "setup.cfg")
        self.version = read_metadata_version(checkout)

    @property
    def new(self) -> Path:
        return self.venv.with_name(self.venv.name + ".new")

    @property
    def old(self) -> Path:
        return self.venv.with_name(self.venv.name + ".old")

    @property
    def python(self) -> Path:
        return venv_python(self.venv)

    def is_current(self, run_python: bool = False) -> bool:
        """A stamp that matches and a ``bin/python`` that is executable, of the version in
        ``pyvenv.cfg`` (no process started); with ``run_python``, that runs, of the version it
        reports (what ``init`` checks before deciding to build nothing)."""
        return stamp_matches(self.venv, self.checkout, self.requires, self.version,
                             self._probed_version if run_python else venv_python_version)

    def _probed_version(self, venv_dir: Path) -> str | None:
        return probe_python(venv_python(venv_dir), self.runner)

    def why_outdated(self) -> str:
        stamp = read_stamp(self.venv)
        moved = interpreter_moved(self.venv)
        if moved is not None:
            return moved
        python_version = probe_python(self.python, self.runner)
        if python_version is None:
            return "its python does not run"
        if stamp.get("python") != python_version:
            return f"its python changed ({stamp.get('python')} -> {python_version})"
        if stamp.get("install_requires") != self.requires:
            return "setup.cfg's install_requires changed"
        if stamp.get("version") != self.version:
            return f"siteboot's version changed ({stamp.get('version')} -> {self.version})"
        if stamp.get("checkout") != str(self.checkout):
            return f"it was made for the checkout at {stamp.get('checkout')}"
        return "its stamp does not match"

    def ensure(self) -> Path:
        """Make the tool venv current; return its python."""
        try:
            self.venv.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BootstrapError(f"cannot create {self.venv.parent}: {exc.strerror or exc}") from None
        from siteboot.fsutil import flock  # not at the top: stage 0's decision path skips it

        with flock(self.venv.parent, best_effort=True, on_wait=lambda: self.log(
                f"waiting for another `siteboot init` (lock on {self.venv.parent})")):
            try:
                return self._ensure()
            except OSError as exc:  # a half-made <venv>.new is already gone (_build_or_remove)
                raise BootstrapError(f"cannot build the tool venv at {self.venv}: {exc}") from None

    def _ensure(self) -> Path:
        exists = os.path.lexists(self.venv)
        # a first build killed half-way at the final path (as siteboot used to build them)
        half_built = exists and made_by_siteboot(self.venv) and not read_stamp(self.venv)
        if exists and not half_built and not (self.venv / "pyvenv.cfg").is_file():
            if not self.venv.is_dir() or any(self.venv.iterdir()):
                raise BootstrapError(
                    f"{self.venv} exists and is not a virtualenv: refusing to replace it",
                    f"remove it, or set {ENV_VENV} to another path")
            self.venv.rmdir()
            exists = False
        if exists and not half_built and not read_stamp(self.venv):
            raise BootstrapError(
                f"{self.venv} is a virtualenv that `{INIT_COMMAND}` did not make (it has no "
                f"{STAMP_NAME}): refusing to replace it",
                f"remove it, or set {ENV_VENV} to another path")
        if exists and not half_built and self.is_current(run_python=True):
            self.log(f"tool venv up to date ({self.venv})")
            return self.python
        for leftover in (self.new, self.old):
            if not os.path.lexists(leftover):
                continue
            if not made_by_siteboot(leftover):
                raise BootstrapError(
                    f"{leftover} is in the way, and `{INIT_COMMAND}` did not make it (it has "
                    f"neither {BUILDING_NAME} nor {STAMP_NAME}): refusing to remove it",
                    f"move it away or remove it yourself, or set {ENV_VENV} to another path")
            self.log(f"removing leftover {leftover}")
            _remove(leftover)
        started = time.monotonic()
        if not exists:
            self.log(f"creating tool venv at {self.venv}")
            self._build_or_remove("")
            try:
                os.rename(self.new, self.venv)
            except OSError as exc:
                _remove(self.new)
                raise BootstrapError(f"cannot move {self.new} to {self.venv}: {exc}") from None
        elif half_built:
            self.log(f"tool venv at {self.venv} was left half-built by an interrupted `init`; "
                     f"building a new one at {self.new}")
            self._build_or_remove(f"the half-built tool venv at {self.venv} is unchanged")
            self._swap()
        else:
            self.log(f"tool venv at {self.venv} is out of date ({self.why_outdated()}); "
                     f"building a new one at {self.new}")
            self._build_or_remove(
                f"the previous tool venv at {self.venv} is unchanged and still works")
            self._swap()
        self.log(f"tool venv ready at {self.venv} ({time.monotonic() - started:.0f} s)")
        return self.python

    def _build_or_remove(self, note: str) -> None:
        """A complete, stamped venv at ``<venv>.new`` with its paths already the final ones; on
        any failure, no ``<venv>.new`` at all."""
        target = self.new
        target.mkdir()
        try:
            (target / BUILDING_NAME).write_text(
                f"`{INIT_COMMAND}` is building this virtualenv for {self.venv}\n", encoding="utf-8")
            python_version = self.build(target)
            # before the rename: a venv at the final path is always complete and stamped
            rewrite_paths(target, str(target), str(self.venv))
            write_stamp(target, self.requires, self.version, python_version, self.checkout)
            (target / BUILDING_NAME).unlink()
        except BootstrapError as exc:
            _remove(target)
            if not note:
                raise
            raise BootstrapError(f"{exc.message}\n  {note}", exc.hint) from None
        except BaseException:
            _remove(target)
            raise

    def _swap(self) -> None:
        """The commit: <venv> -> <venv>.old, <venv>.new -> <venv>, .old removed."""
        try:
            os.rename(self.venv, self.old)
        except OSError as exc:
            _remove(self.new)
            raise BootstrapError(f"cannot move {self.venv} aside to {self.old}: {exc}; the "
                                 "previous tool venv is unchanged") from None
        try:
            os.rename(self.new, self.venv)
        except OSError as exc:
            os.rename(self.old, self.venv)
            _remove(self.new)
            raise BootstrapError(f"cannot move {self.new} to {self.venv}: {exc}; the previous "
                                 "tool venv was put back") from None
        _remove(self.old)

    def build(self, target: Path) -> str:
        """A complete venv at ``target``: python, pip, the requirements, siteboot.pth, launcher.
        Returns the version of its python."""
        try:
            with self.progress.step("tool venv: creating a virtualenv"):
                self.make_venv(target, self.venv.name)  # the final name as the prompt
        except (OSError, ValueError) as exc:  # (with_pip=False: venv itself runs no subprocess)
            raise BootstrapError(f"cannot create a virtualenv at {target}: {exc}") from None
        python = venv_python(target)
        python_version = probe_python(python, self.runner)
        if python_version is None:
            raise BootstrapError(f"the new virtualenv's python ({python}) does not run")
        if not self.install_at_once(python):
            self.install_pip(python, python_version)
            self.install_requirements(python)
        self.install_siteboot(target, python_version)
        return python_version

    def install_at_once(self, python: Path) -> bool:
        """pip, what ensurepip would install, and the requirements in one pip run, pip itself
        run from ensurepip's own wheel: what ``ensurepip`` then ``pip install`` do, without a
        second pip start and resolve. Nothing is byte-compiled here: siteboot runs its python
        with ``-I``, which writes each module's bytecode the first time it is imported (pip
        compiling thousands of files nobody imports cost a cold ``init`` seconds). False where
        ensurepip bundles no pip, or (said) that pip does not run: then the two steps as
        before. A requirement pip cannot install fails as it would there."""
        wheels = self.bundled_wheels() if self.ensurepip_available() and self.requires else []
        pip_wheel = next((w for w in wheels if w.name.startswith("pip-")), None)
        if pip_wheel is None:
            return False
        cmd = [str(python), "-I", f"{pip_wheel}/pip", "install", "--disable-pip-version-check",
               "--no-compile"]
        cmd += self.index_options()
        names, where = self.describe_requirements()
        self.log(f"installing pip and {names}{where} with pip (from {pip_wheel.name})")
        with self.progress.step(f"tool venv: pip install pip, {names}"):
            result = self.runner([*cmd, *(str(w) for w in wheels), *self.requires])
        if result.returncode == 0:
            return True
        if "ERROR: " in result.output:  # pip ran and refused a requirement: said once, not twice
            raise self.requirements_error(python, result)
        last = result.output.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
        self.log(f"pip from {pip_wheel.name} did not run ({last[0].strip()}); ensurepip, then pip")
        return False

    def install_pip(self, python: Path, python_version: str) -> None:
        import tempfile

        if self.ensurepip_available():
            with self.progress.step("tool venv: installing pip (ensurepip)"):
                result = self.runner([str(python), "-Im", "ensurepip", "--upgrade",
                                      "--default-pip"])
            if result.returncode == 0:
                return
            last = result.output.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
            why = f"ensurepip failed ({last[0].strip()})"
        else:
            why = "ensurepip is not available (Debian without python3-venv?)"
        with tempfile.TemporaryDirectory(prefix="siteboot-pip-") as tmp:
            wheel = self.find_pip_wheel(python_version, Path(tmp), why)
            with self.progress.step(f"tool venv: installing pip from {wheel.name}"):
                result = self.runner([str(python), f"{wheel}/pip", "install", "--no-index",
                                      "--disable-pip-version-check", "--quiet", str(wheel)])
            if result.returncode != 0:
                raise BootstrapError(f"{why}; installing pip from {wheel} failed:\n"
                                     f"{tail(result.output)}",
                                     "install python3-venv (Debian/Ubuntu: apt install "
                                     "python3-venv), or put a working pip wheel into --wheelhouse")
        self.log(f"{why}; installed pip from {wheel}")

    def find_pip_wheel(self, python_version: str, tmp: Path, why: str) -> Path:
        sources = local_wheel_sources(self.wheelhouse, self.environ, self.pip_config,
                                      self.system_wheel_dirs)
        wheel = find_local_pip_wheel(sources, python_version)
        if wheel is not None:
            return wheel
        looked = ", ".join(str(s) for s in sources)
        if self.wheelhouse is not None:
            raise BootstrapError(f"{why}, and no pip wheel for Python {python_version} in {looked}",
                                 f"put a pip-*.whl into {self.wheelhouse} (pip download -d DIR "
                                 "pip), or install python3-venv")
        index = index_url(self.environ, self.pip_config)
        self.log(f"{why}; no pip wheel in {looked}; fetching one from {redact(index)}")
        try:
            return download_pip_wheel(index, python_version, self.fetcher, tmp)
        except BootstrapError as exc:
            raise BootstrapError(f"{why}, no pip wheel on this machine ({looked}), and "
                                 f"{exc.message}",
                                 "install python3-venv (Debian/Ubuntu: apt install python3-venv), "
                                 "or pass --wheelhouse DIR holding a pip-*.whl") from None

    def install_requirements(self, python: Path) -> None:
        if not self.requires:
            return
        cmd = [str(python), "-I", "-m", "pip", "install", "--disable-pip-version-check"]
        cmd += self.index_options()
        names, where = self.describe_requirements()
        self.log(f"installing {names}{where} with pip")
        with self.progress.step(f"tool venv: pip install {names}"):
            result = self.runner([*cmd, *self.requires])
        if result.returncode != 0:
            raise self.requirements_error(python, result)

    def index_options(self) -> list[str]:
        return ["--no-index", "--find-links", str(self.wheelhouse)] if self.wheelhouse else []

    def describe_requirements(self) -> tuple[str, str]:
        """The requirements' names (``supervisor, click``), and `` from WHEELHOUSE`` or ""."""
        names = ", ".join(required_distributions(self.requires, None)) or "requirements"
        return names, f" from {self.wheelhouse}" if self.wheelhouse else ""

    def requirements_error(self, python: Path, result: RunResult) -> BootstrapError:
        _names, where = self.describe_requirements()
        return BootstrapError(
            f"pip could not install siteboot's dependencies (setup.cfg install_requires)"
            f"{where} into {python.parent.parent} (exit code {result.returncode}):\n"
            f"{tail(result.output)}",
            offline_hint() if self.wheelhouse is None else
            f"put a wheel for every requirement (and their dependencies) into {self.wheelhouse}: "
            f"`pip download -d {self.wheelhouse} <requirements>` on a machine with network "
            "access, for this Python version and platform")

    def install_siteboot(self, target: Path, python_version: str) -> None:
        """``siteboot.pth`` (the checkout on sys.path) and the ``bin/siteboot`` launcher."""
        from siteboot.fsutil import atomic_write  # not at the top: it imports tempfile

        major_minor = ".".join(python_version.split(".")[:2])
        site_packages = target / "lib" / f"python{major_minor}" / "site-packages"
        try:
            site_packages.mkdir(parents=True, exist_ok=True)
            atomic_write(site_packages / PTH_NAME, f"{self.checkout}\n", 0o644)
            atomic_write(target / "bin" / "siteboot", LAUNCHER, 0o755)
        except OSError as exc:
            raise BootstrapError(f"cannot install siteboot into {target}: {exc}") from None
        # Bytecode, as pip compiles what it installs: `siteboot status` starts measurably faster
        # where PYTHONDONTWRITEBYTECODE is set. Best effort: the checkout may be read-only to us.
        with self.progress.step("tool venv: compiling siteboot"):
            self.runner([str(venv_python(target)), "-I", "-m", "compileall", "-q",
                         str(self.checkout / "siteboot")])
