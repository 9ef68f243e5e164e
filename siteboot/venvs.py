"""Application virtualenvs: one per ``[venvs.NAME]``, each build a transaction.

Layout of ``venv_dir`` (0700 when siteboot creates it), per venv ``NAME``::

    NAME                  -> .NAME-<hash12>   the stable path: a symlink, what ``{venv}`` names
    .NAME-<hash12>/       one real directory per build; its stamp file is written last
    .NAME-src-<random>/   while building: the copies of local paths pip installs from
    .NAME.lock            held (flock) while checking or building
    .NAME.pip.log         the whole output of the last failed build step

``hash`` is the sha256 of the requirement list, the interpreter (path, the file it leads to,
implementation and version) and the content of local paths in the requirements (``sources``).
A build goes into its own directory, pip installs there, the stamp is written, then the stable
symlink is swapped atomically (a temp symlink ``os.replace``-d over it): running programs see
either the old venv or the new one, never a half-built one. A failed build removes its directory
and leaves the symlink alone. After a swap every older build is deleted except the one just
replaced, which running programs may still use until they are restarted: each program's
environment names the build it was started on (``BUILD_ENV``), so a new build changes its
config and ``up`` restarts it (``program_builds``, ``venv_changes``).

virtualenv is imported only when a venv is actually built (``siteboot status`` stays fast).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from siteboot import __version__, sources
from siteboot.errors import BootstrapError, OwnershipError
from siteboot.fsutil import atomic_write, ensure_private_dir, flock, owner_name
from siteboot.hints import command
from siteboot.interpreters import APP_VENV_STAMP, RECORD_KEY, built_with, stamped_moved
from siteboot.plan import InstancePlan, Plan
from siteboot.proc import RunResult, clean_env, last_lines, run_command
from siteboot.progress import SILENT, Reporter
from siteboot.site import VenvSpec

# argv[0] that the default runner executes in-process with virtualenv's Python API.
VIRTUALENV = "virtualenv"
STAMP_NAME = APP_VENV_STAMP
TAIL_LINES = 15
HASH_CHARS = 12

_DESCRIBE = ("import platform, sys; sys.stdout.write(platform.python_implementation() + ' ' + "
             "'.'.join(map(str, sys.version_info[:3])) + '\\n')")


_T = TypeVar("_T")

# The seam for everything this module runs (argv in, exit code and output back); the default
# goes through siteboot.proc, as stage 0's pip runs do.
Runner = Callable[[Sequence[str]], RunResult]


@dataclass(frozen=True)
class VenvOutcome:
    name: str
    path: Path  # the stable path (the symlink), as in programs' commands
    action: str  # "created" | "updated" | "up to date"
    seconds: float
    build: Path | None = None  # the build it points at now
    previous: Path | None = None  # the build it pointed at before

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "action": self.action,
                "build": str(self.build) if self.build else None,
                "previous": str(self.previous) if self.previous else None}


# --------------------------------------------------------------------------------------------
# Running things


def run(argv: Sequence[str]) -> RunResult:
    """The default runner: ``[VIRTUALENV, *args]`` in-process, anything else as a subprocess."""
    if argv and argv[0] == VIRTUALENV:
        return _run_virtualenv(list(argv[1:]))
    return run_command(argv, env=clean_env())


def _run_virtualenv(args: list[str]) -> RunResult:
    """virtualenv's command line, through its Python API (several times faster than ``-m venv``)."""
    # Imported here, not at the top: importing it costs time every other command saves. Through
    # importlib so mypy (python_version 3.9) does not follow it into dependencies with 3.10 syntax.
    import logging

    virtualenv = importlib.import_module("virtualenv")

    class _Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(f"{record.levelname}: {record.getMessage()}")

    logger = logging.getLogger("virtualenv")
    collect = _Collect()
    saved = logger.propagate
    logger.addHandler(collect)
    logger.propagate = False
    try:
        virtualenv.cli_run(args, setup_logging=False)
    except SystemExit as exc:  # argparse rejected the arguments
        collect.lines.append(f"virtualenv {' '.join(args)}: invalid arguments (exit {exc.code})")
        return RunResult(2, "\n".join(collect.lines) + "\n")
    except Exception as exc:
        collect.lines.append(f"{type(exc).__name__}: {exc}")
        return RunResult(1, "\n".join(collect.lines) + "\n")
    finally:
        logger.removeHandler(collect)
        logger.propagate = saved
    return RunResult(0, "\n".join(collect.lines) + "\n" if collect.lines else "")


# --------------------------------------------------------------------------------------------
# Hashes and stamps


def interpreter(spec: VenvSpec, runner: Runner = run) -> tuple[str, str]:
    """The venv's base interpreter and its description (``"CPython 3.11.7"``)."""
    if spec.python is None:
        import platform

        version = ".".join(map(str, sys.version_info[:3]))
        return sys.executable, f"{platform.python_implementation()} {version}"
    python = os.path.expanduser(spec.python)
    result = runner([python, "-c", _DESCRIBE])
    lines = result.output.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise BootstrapError(
            f"venv '{spec.name}': its python {python} does not run (exit {result.returncode})"
            + "".join(f"\n    | {line}" for line in last_lines(result.output, 5)),
            f"fix 'python' in [venvs.{spec.name}] (an interpreter path), or remove it to use "
            f"{sys.executable}")
    return python, lines[-1].strip()


def venv_hash(requirements: Sequence[str], python: str, version: str,
              contents: Mapping[str, str] | None = None) -> str:
    """sha256 (hex) of what a build depends on: the requirements, the interpreter (as named, and
    the file that name leads to: a module upgrade that retargets a link is a new build), and
    ``contents``, the digests of local paths in the requirements (``sources``)."""
    payload = json.dumps({"requirements": [r.strip() for r in requirements],
                          "python": python, "version": version,
                          "interpreter": os.path.realpath(python),
                          "contents": dict(contents or {})}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def build_dir(venv_dir: Path, name: str, digest: str) -> Path:
    return venv_dir / f".{name}-{digest[:HASH_CHARS]}"


def _build_re(name: str) -> re.Pattern[str]:
    # Exact: a venv named "app-server" has builds ".app-server-<hash>", which are not "app"'s.
    return re.compile(r"^\." + re.escape(name) + r"-[0-9a-f]{" + str(HASH_CHARS) + r"}$")


def read_stamp(venv: Path) -> dict[str, Any] | None:
    """The stamp of a complete build, or None (no stamp: missing, half-built or not ours)."""
    try:
        data = json.loads((venv / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_stamp(venv: Path, spec: VenvSpec, inputs: _Inputs) -> None:
    stamp = {"hash": inputs.digest, "name": spec.name, "requirements": list(spec.requirements),
             "contents": inputs.contents, "python": inputs.python,
             "python_version": inputs.version, RECORD_KEY: built_with(venv),
             "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "siteboot": __version__}
    atomic_write(venv / STAMP_NAME, json.dumps(stamp, indent=2) + "\n", mode=0o644)


def broken_reason(path: Path, runner: Runner = run) -> str | None:
    """Why the app venv at the stable ``path`` cannot serve its programs, or None when it can."""
    if not os.path.lexists(path):
        return "missing (never built for this account?)"
    target = _link_target(path)
    if target is None or not target.is_dir():
        return f"{path} points at nothing (its build {target} is gone)"
    stamp = read_stamp(path)
    if stamp is None:
        return "an incomplete build (no stamp)"
    moved = stamped_moved(path, STAMP_NAME)
    if moved is not None:
        return moved
    if runner([str(path / "bin" / "python"), "-c", "pass"]).returncode != 0:
        return (f"its python does not run: the interpreter it was built with ({stamp.get('python')}) "
                "moved or was upgraded (a module system?)")
    return None


def _usable(venv: Path, digest: str, runner: Runner) -> bool:
    """A complete build of ``digest`` whose python runs."""
    stamp = read_stamp(venv)
    if stamp is None or stamp.get("hash") != digest or stamped_moved(venv, STAMP_NAME) is not None:
        return False
    return runner([str(venv / "bin" / "python"), "-c", "pass"]).returncode == 0


# --------------------------------------------------------------------------------------------
# Building


def ensure_venvs(plan: Plan, wheelhouse: Path | None = None, runner: Runner = run,
                 progress: Reporter = SILENT,
                 root: Path | None = None) -> list[VenvOutcome]:
    """Build (or confirm) every venv used by a program of an instance the invoker owns on this
    host, once each.

    ``wheelhouse``: install only from this directory (``pip --no-index --find-links``).
    ``progress`` is told before each build starts, and sees its steps (they take a while).
    ``root``: the site root; local paths in requirements are relative to it
    (``resources.root_of``).
    """
    from siteboot.resources import root_of

    base = root_of(plan.site.path, root)
    results: list[VenvOutcome] = []
    done: set[Path] = set()
    for inst in plan.instances.values():
        if not plan.owns(inst) or not inst.here:
            continue
        for program in inst.programs:
            name = plan.site.programs[program.name].venv
            if name is None or program.venv is None or program.venv in done:
                continue
            done.add(program.venv)
            results.append(ensure_venv(plan.site.venvs[name], program.venv, wheelhouse, runner,
                                       site_path=plan.site.path, progress=progress,
                                       base=base))
    return results


def ensure_venv(spec: VenvSpec, path: Path, wheelhouse: Path | None = None, runner: Runner = run,
                site_path: Path | None = None,
                progress: Reporter = SILENT,
                base: Path | None = None) -> VenvOutcome:
    """Make the stable ``path`` (a symlink) point at a complete build of ``spec``; local paths
    in its requirements are relative to ``base`` (default: the current directory)."""
    started = time.monotonic()
    venv_dir = path.parent
    base = base or Path.cwd()
    _refuse_real(spec, path)
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise BootstrapError(f"venv '{spec.name}': wheelhouse {wheelhouse} is not a directory",
                             "pass a directory of wheels, or no wheelhouse to use the index")
    _ensure_venv_dir(venv_dir)
    python, version = interpreter(spec, runner)
    requirements = _named(spec, lambda: sources.parse_all(spec.requirements, base))
    contents = _named(spec, lambda: sources.digests(requirements, base))
    digest = venv_hash(spec.requirements, python, version, contents)
    with flock(venv_dir / f".{spec.name}.lock"):
        _refuse_real(spec, path)  # again: someone may have made it while we waited
        old = _link_target(path)
        if old is not None and _usable(path, digest, runner):
            return VenvOutcome(spec.name, path, "up to date", time.monotonic() - started, old)
        build = build_dir(venv_dir, spec.name, digest)
        if not _usable(build, digest, runner):  # else: an earlier build, kept as previous: reuse
            count = len(spec.requirements)
            progress.note(f"venv {spec.name}: building {path} "
                          f"({count} requirement{'s' if count != 1 else ''})")
            with _snapshot(spec, requirements, base, venv_dir) as copied:
                if copied.digests != contents:  # changed since it was hashed: build what was copied
                    contents = copied.digests
                    digest = venv_hash(spec.requirements, python, version, contents)
                    build = build_dir(venv_dir, spec.name, digest)
                if not _usable(build, digest, runner):
                    arguments = [word for r in requirements
                                 for word in r.arguments(copied.copies.get(r.text))]
                    _build(spec, path, build, _Inputs(python, version, digest, contents, arguments),
                           wheelhouse, runner, site_path, old, progress)
        _swap(path, build)
        replaced = old.name if old is not None and old.parent == Path(os.path.normpath(venv_dir)) else ""
        _cleanup(venv_dir, spec.name, keep={build.name, replaced})
        _unlink(_log_path(path))
    action = "created" if old is None else "updated"
    return VenvOutcome(spec.name, path, action, time.monotonic() - started, build, old)


@dataclass(frozen=True)
class _Inputs:
    """What one build is made from."""

    python: str
    version: str
    digest: str
    contents: dict[str, str]  # requirement -> digest of its local path
    arguments: list[str]  # pip's, local paths replaced by their copies


def _named(spec: VenvSpec, step: Callable[[], _T]) -> _T:
    """``step()``, its refusal prefixed with the venv it is about."""
    try:
        return step()
    except BootstrapError as exc:
        raise BootstrapError(f"venv '{spec.name}': {exc.message}", exc.hint) from None


@contextmanager
def _snapshot(spec: VenvSpec, requirements: list[sources.Requirement], base: Path,
              venv_dir: Path) -> Iterator[sources.Snapshot]:
    """The local paths of ``requirements`` copied next to the builds (``sources.snapshot``),
    removed again once the build is done; one a crash left behind goes first."""
    if not any(r.path is not None for r in requirements):
        yield sources.Snapshot({}, {})
        return
    import glob
    import secrets

    for leftover in venv_dir.glob(f".{glob.escape(spec.name)}-src-*"):
        _remove(leftover, strict=False)
    into = venv_dir / f".{spec.name}-src-{secrets.token_hex(4)}"
    try:
        yield _named(spec, lambda: sources.snapshot(requirements, base, into))
    finally:
        _remove(into, strict=False)


def _refuse_real(spec: VenvSpec, path: Path) -> None:
    if path.is_symlink() or not path.exists():
        return
    kind = "directory" if path.is_dir() else "file"
    raise BootstrapError(
        f"venv '{spec.name}': {path} is a real {kind}, not the symlink siteboot manages there; "
        "refusing to replace it (it may hold data)",
        f"move it away (mv {path} {path}.old) or choose another [site] venv_dir, "
        f"then run `{command('init')}` again")


def _ensure_venv_dir(venv_dir: Path) -> None:
    if not venv_dir.exists() and not venv_dir.is_symlink():
        ensure_private_dir(venv_dir)  # created by siteboot: 0700
        return
    if not venv_dir.is_dir():
        raise BootstrapError(f"venv_dir {venv_dir} exists but is not a directory",
                             "remove it or choose another [site] venv_dir")
    uid = venv_dir.stat().st_uid
    if uid != os.geteuid():
        raise OwnershipError(
            f"venv_dir {venv_dir} is owned by {owner_name(uid)}, not {owner_name(os.geteuid())}: "
            "refusing to build venvs in a directory someone else controls",
            "its owner must remove it; or change [site] venv_dir")


def _link_target(path: Path) -> Path | None:
    """Where the stable symlink points (it may be dangling), or None when there is none."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    return Path(os.path.normpath(path.parent / target))


def _log_path(path: Path) -> Path:
    return path.parent / f".{path.name}.pip.log"


def _build(spec: VenvSpec, path: Path, build: Path, inputs: _Inputs, wheelhouse: Path | None,
           runner: Runner, site_path: Path | None, old: Path | None,
           progress: Reporter = SILENT) -> None:
    """Build ``build`` completely (stamp last), or remove it and raise ``BootstrapError``."""
    if build.exists() or build.is_symlink():
        _remove(build, strict=True)  # half-built (a crash) or unusable: not a complete build
    try:
        with progress.step(f"venv {spec.name}: virtualenv with {inputs.python}"):
            result = runner([VIRTUALENV, str(build), "--python", inputs.python, "--prompt",
                             spec.name, "--no-periodic-update"])
        if result.returncode != 0:
            raise _failure(spec, path, "virtualenv could not create it", result, wheelhouse,
                           site_path, old)
        if inputs.arguments:
            argv = [str(build / "bin" / "python"), "-I", "-m", "pip", "install",
                    "--disable-pip-version-check", "--no-input"]
            if wheelhouse is not None:
                argv += ["--no-index", "--find-links", str(wheelhouse)]
            with progress.step(f"venv {spec.name}: pip install {' '.join(spec.requirements)}"):
                result = runner([*argv, *inputs.arguments])
            if result.returncode != 0:
                raise _failure(spec, path, "pip install failed", result, wheelhouse, site_path, old)
        _write_stamp(build, spec, inputs)
    except BaseException:
        _remove(build, strict=False)
        raise


def _failure(spec: VenvSpec, path: Path, what: str, result: RunResult, wheelhouse: Path | None,
             site_path: Path | None, old: Path | None) -> BootstrapError:
    log = _log_path(path)
    try:
        atomic_write(log, result.output, mode=0o600)
        saved = f"; whole output: {log}"
    except OSError:
        saved = ""
    if old is None:
        state = f"nothing was changed: {path} does not exist yet"
    else:
        state = f"nothing was changed: {path} still points at the previous venv ({old.name})"
    tail = last_lines(result.output, TAIL_LINES) or ["(no output)"]
    lines = [f"venv '{spec.name}': {what} (exit {result.returncode}); {state}",
             f"  requirements: {', '.join(spec.requirements) or '(none)'}"
             + (f"; only from wheelhouse {wheelhouse}" if wheelhouse is not None else ""),
             f"  last lines of the output{saved}:",
             *(f"    | {line}" for line in tail)]
    where = f"[venvs.{spec.name}] in {site_path}" if site_path else f"[venvs.{spec.name}]"
    if wheelhouse is not None:
        hint = (f"pip may only use the wheels in {wheelhouse}: add the missing ones there, or fix "
                f"the requirements of {where}; then run "
                f"`{command('init', '--wheelhouse', str(wheelhouse))}` again")
    else:
        hint = (f"fix the requirements of {where} (a misspelt name, a version that does not exist, "
                f"no network or index?), then run `{command('init')}` again")
    return BootstrapError("\n".join(lines), hint)


def _swap(path: Path, build: Path) -> None:
    """Point ``path`` at ``build`` atomically: a temp symlink renamed over the old one."""
    import secrets

    tmp = path.parent / f".{path.name}.link-{os.getpid()}-{secrets.token_hex(4)}"
    os.symlink(build.name, tmp)  # relative: the venv_dir may be moved or mounted elsewhere
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _cleanup(venv_dir: Path, name: str, keep: set[str]) -> None:
    """Delete ``name``'s builds except ``keep`` (the new one and the one it replaced)."""
    pattern = _build_re(name)
    for entry in venv_dir.iterdir():
        if pattern.match(entry.name) and entry.name not in keep and not entry.is_symlink() \
                and entry.is_dir():
            _remove(entry, strict=False)  # what fails now is retried after the next build


def _remove(path: Path, strict: bool) -> None:
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            import shutil

            shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if strict:
            raise BootstrapError(f"cannot remove the unfinished build {path}: {exc}",
                                 f"remove it by hand, then run `{command('init')}` again") from None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Which build each program runs on


BUILD_ENV = "SITEBOOT_VENV_BUILD"  # in a program's environment: the build it was started on


def current_build(path: Path) -> Path | None:
    """The complete build the stable ``path`` points at, or None (not built, or half-built):
    a build's identity, since a build directory is named by its hash."""
    target = _link_target(path)
    if target is None or not (target / STAMP_NAME).is_file():
        return None
    return target


def program_builds(inst: InstancePlan) -> dict[str, Path | None]:
    """program name -> the build of its venv that it runs on when (re)started now, for each
    program of ``inst`` that has a venv. ``deploy``/``diff`` compare it with ``BUILD_ENV`` in
    a running process's environment (``venv_changes``) or in the config it was started with."""
    return {p.name: current_build(p.venv) for p in inst.programs if p.venv is not None}


def with_builds(inst: InstancePlan) -> InstancePlan:
    """``inst`` with each program that has a built venv naming that build in its environment
    (``BUILD_ENV``): a new build is then a changed program config, which ``up`` applies by
    restarting the program, as supervisorctl's ``update`` would."""
    builds = program_builds(inst)
    programs = [dataclasses.replace(p, environment={**p.environment, BUILD_ENV: str(build)})
                if (build := builds.get(p.name)) is not None else p for p in inst.programs]
    return dataclasses.replace(inst, programs=programs)


@dataclass(frozen=True)
class VenvChange:
    """A running process whose venv has a build other than the one it was started on."""

    process: str
    pid: int
    venv: Path  # the stable path
    was: str | None  # ``BUILD_ENV`` in its environment; None: started before builds were named
    now: Path

    def describe(self, restarted: bool) -> str:
        was = Path(self.was).name if self.was else "a build from before siteboot named them"
        verb = "restarted on" if restarted else "still runs on the old build; run `siteboot " \
            f"restart {self.process}` for"
        return f"{self.process}: {verb} venv {self.venv.name}'s new build {self.now.name} (was {was})"


def venv_changes(inst: InstancePlan, running: Any) -> list[VenvChange]:
    """The processes of ``inst`` (children of its supervisord ``running``, a psutil.Process)
    whose venv's current build is not the one in their environment."""
    by_process = {process: program for program in inst.programs if program.venv is not None
                  for process in program.process_names()}
    if not by_process:  # no venv, no build to compare: the process table is not searched
        return []
    import psutil

    changes = []
    try:
        children = running.children()
    except psutil.Error:
        return []
    for child in children:
        try:
            environ = child.environ()
        except psutil.Error:
            continue
        program = by_process.get(environ.get("SUPERVISOR_PROCESS_NAME", ""))
        if program is None or program.venv is None:
            continue
        now = current_build(program.venv)
        if now is not None and environ.get(BUILD_ENV) != str(now):
            changes.append(VenvChange(environ["SUPERVISOR_PROCESS_NAME"], child.pid, program.venv,
                                      environ.get(BUILD_ENV), now))
    return changes
