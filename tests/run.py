#!/usr/bin/env python3
"""The whole test suite from a bare python3: build .venv-test, then ruff, mypy and pytest.

    python3 tests/run.py                 # everything
    python3 tests/run.py -m "not slow"   # extra arguments go to pytest
    python3 tests/run.py --lock          # re-resolve the test toolchain into tests/constraints.txt

The test venv installs siteboot with its ``test`` extra under ``tests/constraints.txt``, which pins
every package the tests install (transitive ones too): a new release of pytest, mypy or one of
their dependencies cannot turn CI red overnight. siteboot's own dependencies stay ranges in
setup.cfg; ``--lock`` resolves them afresh in a throwaway venv and rewrites the pins.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("SITEBOOT_TEST_VENV", ROOT / ".venv-test"))
STAMP = VENV / "siteboot-test-stamp"
CONSTRAINTS = ROOT / "tests" / "constraints.txt"
LOCK_HEADER = """\
# Every package the test venv installs, pinned (made by `python3 tests/run.py --lock` with
# Python {python}). tests/run.py installs siteboot[test] under these constraints; to move to
# newer releases, run that command and commit the result once the suite passes.
"""


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=ROOT, check=False)
    if result.returncode != 0:
        sys.exit(result.returncode)


def make_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, symlinks=True).create(path)
    return path / "bin" / "python"


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    wanted = hashlib.sha256((ROOT / "setup.cfg").read_bytes()
                            + CONSTRAINTS.read_bytes()).hexdigest()
    if python.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return python
    if not python.exists():
        make_venv(VENV)
    run(str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "-c", str(CONSTRAINTS), "-e", f"{ROOT}[test]")
    STAMP.write_text(wanted)
    return python


def lock() -> None:
    """Resolve siteboot[test] in a throwaway venv and write every installed version."""
    with tempfile.TemporaryDirectory(prefix="siteboot-lock-") as tmp:
        python = make_venv(Path(tmp) / "venv")
        run(str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            f"{ROOT}[test]")
        frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], check=True,
                                capture_output=True, text=True).stdout.splitlines()
    skip = ("siteboot", "pip", "setuptools", "wheel")
    pins = sorted((line for line in frozen if "==" in line
                   and line.split("==")[0].lower() not in skip), key=str.lower)
    version = ".".join(map(str, sys.version_info[:3]))
    CONSTRAINTS.write_text(LOCK_HEADER.format(python=version) + "\n".join(pins) + "\n")
    print(f"wrote {len(pins)} pins to {CONSTRAINTS.relative_to(ROOT)}")


def main() -> None:
    if sys.argv[1:] == ["--lock"]:
        lock()
        return
    python = ensure_venv()
    bindir = python.parent
    run(str(bindir / "ruff"), "check", ".")
    run(str(bindir / "mypy"))
    os.execv(str(python), [str(python), "-m", "pytest", *sys.argv[1:]])


if __name__ == "__main__":
    main()
