"""Which interpreter built a virtualenv: recorded in its stamp when it is built, checked with
``stat`` alone (``siteboot status`` asks every minute; nothing is started).

A venv runs on the base interpreter it was made from: its ``bin/python`` links to it and its
``pyvenv.cfg`` names its folder (``home``). On HPC hosts that interpreter comes from a module;
a module upgrade removes it (the venv's python no longer starts), or retargets a link on the way
to it (``bin/python`` now starts another interpreter, whose version the venv's packages were not
installed for). Both are what ``moved`` reports; ``init`` rebuilds such a venv. An interpreter
replaced in place at the same path (an OS security update) is neither.

Standard library only: stage 0 (the tool venv's stamp), ``venvs`` and ``status`` use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Any

RECORD_KEY = "interpreter"  # where a stamp keeps ``built_with``
APP_VENV_STAMP = ".siteboot-venv.json"  # an app venv's stamp (``venvs``)


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def pyvenv_home(venv: Path) -> str | None:
    """``home`` in the venv's ``pyvenv.cfg``: the folder of the interpreter it was made from."""
    try:
        text = (venv / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() == "home":
            return value.strip() or None
    return None


def built_with(venv: Path) -> dict[str, str | None]:
    """What to record when ``venv`` is built: the interpreter its ``bin/python`` leads to (None
    for a copy inside the venv, which moves with it) and ``pyvenv.cfg``'s ``home``."""
    executable = os.path.realpath(_python(venv))
    inside = os.path.realpath(venv) + os.sep
    return {"executable": None if executable.startswith(inside) else executable,
            "home": pyvenv_home(venv)}


def moved(venv: Path, recorded: Mapping[str, Any] | None) -> str | None:
    """Why the interpreter of ``venv`` is no longer the one that built it, or None. A venv built
    before interpreters were recorded (``recorded`` None) is only checked for a python that is
    gone."""
    python = _python(venv)
    executable = (recorded or {}).get("executable")
    if not os.path.exists(python):  # follows the links: dangling when the interpreter is gone
        gone = executable or os.path.realpath(python)
        return f"the interpreter it was built with ({gone}) is gone (a module upgrade?)"
    if executable and os.path.realpath(python) != executable:
        return (f"the interpreter it was built with ({executable}) moved: its bin/python now "
                f"starts {os.path.realpath(python)} (a module upgrade?)")
    home = (recorded or {}).get("home") or pyvenv_home(venv)
    if home and not os.path.isdir(home):
        return f"the folder of the interpreter it was built with ({home}) is gone"
    return None


def stamped_moved(venv: Path, stamp_name: str) -> str | None:
    """``moved`` for a built venv with the record in its stamp file ``stamp_name``; None for
    what is not a complete build (missing or half-built: ``doctor`` says what that is)."""
    try:
        stamp = json.loads((venv / stamp_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    recorded = stamp.get(RECORD_KEY) if isinstance(stamp, dict) else None
    return moved(venv, recorded if isinstance(recorded, dict) else None)
