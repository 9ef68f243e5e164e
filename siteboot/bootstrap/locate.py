"""Where stage 0 finds things: the checkout, the tool venv and its python, the wheelhouse; and the
re-exec into the tool venv.

Every ``python -m siteboot`` run imports this module (``bin/siteboot`` included) before it knows
whether there is anything to build, so it holds only what that decision needs and stays cheap.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from siteboot.errors import BootstrapError

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    import configparser

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the siteboot package
STAMP_NAME = "siteboot-stamp.json"
BUILDING_NAME = "siteboot-building"  # in a venv that is being built: it is siteboot's, unfinished
PTH_NAME = "siteboot.pth"
ENV_VENV = "SITEBOOT_VENV"
ENV_BOOTSTRAPPED = "SITEBOOT_BOOTSTRAPPED"
ENV_WHEELHOUSE = "SITEBOOT_WHEELHOUSE"
ENV_DEBUG = "SITEBOOT_DEBUG"
WHEELHOUSE_OPTION = "--wheelhouse"
INIT_COMMAND = "python3 -m siteboot init"
MIN_PYTHON = (3, 9)


def init_command() -> str:
    """``python3 -m siteboot init`` with the site options the operator gave: a hint to paste."""
    from siteboot.hints import command

    return command("init", program="python3 -m siteboot")


def debug_enabled(argv: Sequence[str] = ()) -> bool:
    return os.environ.get(ENV_DEBUG, "") not in ("", "0") or "--debug" in argv


def log(message: str) -> None:
    print(f"siteboot: {message}", file=sys.stderr, flush=True)


def read_setup_cfg(path: Path) -> configparser.ConfigParser:
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    with open(path, encoding="utf-8") as handle:
        parser.read_file(handle)
    return parser


def find_checkout(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The checkout holding the package, or None when siteboot was installed (from a wheel)."""
    root = package_dir.parent
    setup_cfg = root / "setup.cfg"
    if not setup_cfg.is_file():
        return None
    try:
        text = setup_cfg.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return root if _metadata_name(text) == "siteboot" else None


def _metadata_name(setup_cfg: str) -> str:
    """``[metadata] name`` of a setup.cfg, read by a line scan: every command asks, and
    configparser costs `status` more than the rest of this module."""
    section = ""
    for line in setup_cfg.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
        elif section == "metadata" and not line[:1].isspace() and "=" in stripped:
            key, _, value = stripped.partition("=")
            if key.strip() == "name":
                return value.strip()
    return ""


def tool_venv_path(checkout: Path, environ: Mapping[str, str] = os.environ) -> Path:
    configured = environ.get(ENV_VENV, "")
    if configured:
        return Path(os.path.abspath(os.path.expanduser(configured)))
    return checkout / ".venv"


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def wheelhouse_from(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> Path | None:
    """``--wheelhouse DIR`` / ``--wheelhouse=DIR`` anywhere in argv (before ``--``), else
    ``$SITEBOOT_WHEELHOUSE``. It stays in argv: the ``init`` command takes it too."""
    value: str | None = None
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == WHEELHOUSE_OPTION and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(WHEELHOUSE_OPTION + "="):
            value = arg.split("=", 1)[1]
    value = value or environ.get(ENV_WHEELHOUSE) or None
    return Path(os.path.abspath(os.path.expanduser(value))) if value else None


def reexec(python: Path, args: Sequence[str]) -> None:
    """Replace this process by ``<venv>/bin/python -I -m siteboot <args>`` (never returns).

    ``-I``: the current directory is not on sys.path, so a ``siteboot`` package there cannot run
    instead of the checkout's (which the venv's ``siteboot.pth`` still puts on sys.path)."""
    from siteboot import proc  # not at the top: a run inside the tool venv never re-executes

    env = dict(os.environ)
    env[ENV_BOOTSTRAPPED] = "1"
    try:
        proc.exec_replace(proc.python_module("siteboot", *args, python=str(python)), env)
    except OSError as exc:
        raise BootstrapError(f"cannot run {python}: {exc.strerror or exc}",
                             f"remove {python.parent.parent} and run `{init_command()}`") from None
