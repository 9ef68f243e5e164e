"""Whether the tool venv is current, told by its ``siteboot-stamp.json``.

The stamp is a sha256 over ``setup.cfg``'s ``install_requires``, siteboot's version, the venv's
Python version and the checkout path, written into the venv as the last step of a build, with
the interpreter it was built with (``interpreters``: a venv whose interpreter moved is rebuilt). A
matching stamp and a working ``bin/python`` mean nothing to do: no pip call at all. Stage 0
asks ``is_current`` before every re-exec into the tool venv, so it reads files and starts no
process; ``init`` checks the same stamp with the venv's python run for its version.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

from siteboot.bootstrap.locate import BUILDING_NAME, STAMP_NAME, read_setup_cfg, venv_python
from siteboot.bootstrap.requirements import read_requirements
from siteboot.errors import BootstrapError
from siteboot.interpreters import RECORD_KEY, built_with, stamped_moved


def read_metadata_version(checkout: Path) -> str:
    """``[metadata] version``: a literal, or ``attr: pkg.module.NAME`` read from the source."""
    import ast

    try:
        value = read_setup_cfg(checkout / "setup.cfg").get("metadata", "version", fallback="")
    except (OSError, configparser.Error) as exc:
        raise BootstrapError(f"cannot read the version from {checkout / 'setup.cfg'}: {exc}") from None
    value = value.strip()
    if not value.startswith("attr:"):
        return value
    dotted = value[len("attr:"):].strip()
    module, _, name = dotted.rpartition(".")
    base = checkout.joinpath(*module.split("."))
    for source in (base.with_suffix(".py"), base / "__init__.py"):
        if source.is_file():
            tree = ast.parse(source.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == name for t in node.targets):
                    found = ast.literal_eval(node.value)
                    return str(found)
    raise BootstrapError(f"setup.cfg's version ({value}) names nothing in {checkout}")


def compute_stamp(requires: Sequence[str], version: str, python_version: str,
                  checkout: Path) -> str:
    payload = json.dumps({"install_requires": list(requires), "version": version,
                          "python": python_version, "checkout": str(checkout)}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def venv_cfg_version(venv_dir: Path) -> str | None:
    """The Python version ``pyvenv.cfg`` records (``version``, else ``version_info``), as
    ``3.11.2``; None when there is none."""
    try:
        text = (venv_dir / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip().lower()] = value.strip()
    for key in ("version", "version_info"):
        match = re.match(r"^(\d+\.\d+\.\d+)(?:$|[^\d])", values.get(key, ""))
        if match:
            return match.group(1)
    return None


def venv_python_version(venv_dir: Path) -> str | None:
    """The version of a venv's python without running it: ``pyvenv.cfg``'s, when ``bin/python``
    is executable and (where the file it links to is named ``pythonX.Y``) of the same X.Y."""
    python = venv_python(venv_dir)
    version = venv_cfg_version(venv_dir)
    if version is None or not os.access(python, os.X_OK):  # also false for a dangling symlink
        return None
    match = re.match(r"^python(\d+\.\d+)$", os.path.basename(os.path.realpath(python)))
    if match and not version.startswith(match.group(1) + "."):
        return None  # the base python was replaced by another minor version
    return version


def made_by_siteboot(path: Path) -> bool:
    """A directory (not a symlink) with siteboot's building marker or a stamp in it."""
    if path.is_symlink() or not path.is_dir():
        return False
    return (path / BUILDING_NAME).is_file() or bool(read_stamp(path))


def read_stamp(venv_dir: Path) -> dict[str, object]:
    try:
        data = json.loads((venv_dir / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_stamp(venv_dir: Path, requires: Sequence[str], version: str, python_version: str,
                checkout: Path) -> None:
    data = {"sha256": compute_stamp(requires, version, python_version, checkout),
            "install_requires": list(requires), "version": version, "python": python_version,
            "checkout": str(checkout), RECORD_KEY: built_with(venv_dir)}
    from siteboot.fsutil import atomic_write  # not at the top: it imports tempfile

    atomic_write(venv_dir / STAMP_NAME, json.dumps(data, indent=2) + "\n", 0o644)


def stamp_matches(venv_dir: Path, checkout: Path, requires: Sequence[str], version: str,
                  python_version: Callable[[Path], str | None] = venv_python_version) -> bool:
    """A stamp in ``venv_dir`` made for these inputs and for the version of its python, as
    ``python_version`` tells it (by default from ``pyvenv.cfg``, without running anything); that
    is only asked when there is a stamp."""
    data = read_stamp(venv_dir)
    stamp = data.get("sha256")
    if not stamp or interpreter_moved(venv_dir) is not None:
        return False
    found = python_version(venv_dir)
    return found is not None and stamp == compute_stamp(requires, version, found, checkout)


def interpreter_moved(venv_dir: Path) -> str | None:
    """Why the tool venv's interpreter is not the one that built it (``interpreters.moved``)."""
    return stamped_moved(venv_dir, STAMP_NAME)


def is_current(checkout: Path, venv_dir: Path) -> bool:
    """Whether ``venv_dir`` is the current tool venv of ``checkout``: a matching stamp and a
    ``bin/python`` that is executable, of the version in ``pyvenv.cfg`` (no process started)."""
    requires = read_requirements(checkout / "setup.cfg")
    return stamp_matches(venv_dir, checkout, requires, read_metadata_version(checkout))
