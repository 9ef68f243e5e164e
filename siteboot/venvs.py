"""Application virtualenvs: one per ``[venvs.NAME]``, each build a transaction.

Layout of ``venv_dir`` (0700 when siteboot creates it), per venv ``NAME``::

    NAME                  -> .NAME-<hash12>   the stable path: a symlink, what ``{venv}`` names
    .NAME-<hash12>/       one real directory per build; its stamp file is written last
    .NAME.lock            held (flock) while checking or building
    .NAME.pip.log         the whole output of the last failed build step

``hash`` is the sha256 of the requirement list and the interpreter (path, implementation and
version). A build goes into its own directory, pip installs there, the stamp is written, then
the stable symlink is swapped atomically (a temp symlink ``os.replace``-d over it): running
programs see either the old venv or the new one, never a half-built one. A failed build removes
its directory and leaves the symlink alone. After a swap every older build is deleted except the
one just replaced, which running programs may still use until they are restarted.

virtualenv is imported only when a venv is actually built (``siteboot status`` stays fast).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import platform
import re
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from siteboot import __version__
from siteboot.errors import BootstrapError, OwnershipError
from siteboot.fsutil import atomic_write, ensure_private_dir, flock, owner_name
from siteboot.hints import command
from siteboot.plan import Plan
from siteboot.proc import RunResult, clean_env, last_lines, run_command
from siteboot.progress import SILENT, Reporter
from siteboot.site import VenvSpec

# argv[0] that the default runner executes in-process with virtualenv's Python API.
VIRTUALENV = "virtualenv"
STAMP_NAME = ".siteboot-venv.json"
TAIL_LINES = 15
HASH_CHARS = 12

_DESCRIBE = ("import platform, sys; sys.stdout.write(platform.python_implementation() + ' ' + "
             "'.'.join(map(str, sys.version_info[:3])) + '\\n')")


# The seam for everything this module runs (argv in, exit code and output back); the default
# goes through siteboot.proc, as stage 0's pip runs do.
Runner = Callable[[Sequence[str]], RunResult]


@dataclass(frozen=True)
class VenvOutcome:
    name: str
    path: Path  # the stable path (the symlink), as in programs' commands
    action: str  # "created" | "updated" | "up to date"
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "action": self.action}


# --------------------------------------------------------------------------------------------
# Running things


def run(argv: Sequence[str]) -> RunResult:
    """The default runner: ``[VIRTUALENV, *args]`` in-process, anything else as a subprocess."""
    if argv and argv[0] == VIRTUALENV:
        return _run_virtualenv(list(argv[1:]))
    return run_command(argv, env=clean_env())


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname}: {record.getMessage()}")


def _run_virtualenv(args: list[str]) -> RunResult:
    """virtualenv's command line, through its Python API (several times faster than ``-m venv``)."""
    # Imported here, not at the top: importing it costs time every other command saves. Through
    # importlib so mypy (python_version 3.9) does not follow it into dependencies with 3.10 syntax.
    virtualenv = importlib.import_module("virtualenv")

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


def venv_hash(requirements: Sequence[str], python: str, version: str) -> str:
    """sha256 (hex) of what a build depends on: the requirements and the interpreter."""
    payload = json.dumps({"requirements": [r.strip() for r in requirements],
                          "python": python, "version": version}, sort_keys=True)
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


def _write_stamp(venv: Path, spec: VenvSpec, python: str, version: str, digest: str) -> None:
    stamp = {"hash": digest, "name": spec.name, "requirements": list(spec.requirements),
             "python": python, "python_version": version,
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
    if runner([str(path / "bin" / "python"), "-c", "pass"]).returncode != 0:
        return (f"its python does not run: the interpreter it was built with ({stamp.get('python')}) "
                "moved or was upgraded (a module system?)")
    return None


def _usable(venv: Path, digest: str, runner: Runner) -> bool:
    """A complete build of ``digest`` whose python runs."""
    stamp = read_stamp(venv)
    if stamp is None or stamp.get("hash") != digest:
        return False
    return runner([str(venv / "bin" / "python"), "-c", "pass"]).returncode == 0


# --------------------------------------------------------------------------------------------
# Building


def ensure_venvs(plan: Plan, wheelhouse: Path | None = None, runner: Runner = run,
                 progress: Reporter = SILENT) -> list[VenvOutcome]:
    """Build (or confirm) every venv used by a program of an instance the invoker owns, once each.

    ``wheelhouse``: install only from this directory (``pip --no-index --find-links``).
    ``progress`` is told before each build starts, and sees its steps (they take a while).
    """
    results: list[VenvOutcome] = []
    done: set[Path] = set()
    for inst in plan.instances.values():
        if not plan.owns(inst):
            continue
        for program in inst.programs:
            name = plan.site.programs[program.name].venv
            if name is None or program.venv is None or program.venv in done:
                continue
            done.add(program.venv)
            results.append(ensure_venv(plan.site.venvs[name], program.venv, wheelhouse, runner,
                                       site_path=plan.site.path, progress=progress))
    return results


def ensure_venv(spec: VenvSpec, path: Path, wheelhouse: Path | None = None, runner: Runner = run,
                site_path: Path | None = None,
                progress: Reporter = SILENT) -> VenvOutcome:
    """Make the stable ``path`` (a symlink) point at a complete build of ``spec``."""
    started = time.monotonic()
    venv_dir = path.parent
    _refuse_real(spec, path)
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise BootstrapError(f"venv '{spec.name}': wheelhouse {wheelhouse} is not a directory",
                             "pass a directory of wheels, or no wheelhouse to use the index")
    _ensure_venv_dir(venv_dir)
    python, version = interpreter(spec, runner)
    digest = venv_hash(spec.requirements, python, version)
    build = build_dir(venv_dir, spec.name, digest)
    with flock(venv_dir / f".{spec.name}.lock"):
        _refuse_real(spec, path)  # again: someone may have made it while we waited
        old = _link_target(path)
        if old is not None and _usable(path, digest, runner):
            return VenvOutcome(spec.name, path, "up to date", time.monotonic() - started)
        if not _usable(build, digest, runner):  # else: an earlier build, kept as previous: reuse
            count = len(spec.requirements)
            progress.note(f"venv {spec.name}: building {path} "
                          f"({count} requirement{'s' if count != 1 else ''})")
            _build(spec, path, build, python, version, digest, wheelhouse, runner, site_path, old,
                   progress)
        _swap(path, build)
        replaced = old.name if old is not None and old.parent == Path(os.path.normpath(venv_dir)) else ""
        _cleanup(venv_dir, spec.name, keep={build.name, replaced})
        _unlink(_log_path(path))
    action = "created" if old is None else "updated"
    return VenvOutcome(spec.name, path, action, time.monotonic() - started)


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


def _build(spec: VenvSpec, path: Path, build: Path, python: str, version: str, digest: str,
           wheelhouse: Path | None, runner: Runner, site_path: Path | None,
           old: Path | None, progress: Reporter = SILENT) -> None:
    """Build ``build`` completely (stamp last), or remove it and raise ``BootstrapError``."""
    if build.exists() or build.is_symlink():
        _remove(build, strict=True)  # half-built (a crash) or unusable: not a complete build
    try:
        with progress.step(f"venv {spec.name}: virtualenv with {python}"):
            result = runner([VIRTUALENV, str(build), "--python", python, "--prompt", spec.name,
                             "--no-periodic-update"])
        if result.returncode != 0:
            raise _failure(spec, path, "virtualenv could not create it", result, wheelhouse,
                           site_path, old)
        if spec.requirements:
            argv = [str(build / "bin" / "python"), "-I", "-m", "pip", "install",
                    "--disable-pip-version-check", "--no-input"]
            if wheelhouse is not None:
                argv += ["--no-index", "--find-links", str(wheelhouse)]
            with progress.step(f"venv {spec.name}: pip install {' '.join(spec.requirements)}"):
                result = runner([*argv, *spec.requirements])
            if result.returncode != 0:
                raise _failure(spec, path, "pip install failed", result, wheelhouse, site_path, old)
        _write_stamp(build, spec, python, version, digest)
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
