#!/usr/bin/env python3
"""The whole test suite from a bare python3: build .venv-test, then ruff, mypy and pytest.

    python3 tests/run.py            # everything
    python3 tests/run.py -m "not slow"   # extra arguments go to pytest
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("SITEBOOT_TEST_VENV", ROOT / ".venv-test"))
STAMP = VENV / "siteboot-test-stamp"


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=ROOT, check=False)
    if result.returncode != 0:
        sys.exit(result.returncode)


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    wanted = hashlib.sha256((ROOT / "setup.cfg").read_bytes()).hexdigest()
    if python.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return python
    if not python.exists():
        venv.EnvBuilder(with_pip=True, symlinks=True).create(VENV)
    run(str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]")
    STAMP.write_text(wanted)
    return python


def main() -> None:
    python = ensure_venv()
    bindir = python.parent
    run(str(bindir / "ruff"), "check", ".")
    run(str(bindir / "mypy"))
    os.execv(str(python), [str(python), "-m", "pytest", *sys.argv[1:]])


if __name__ == "__main__":
    main()
