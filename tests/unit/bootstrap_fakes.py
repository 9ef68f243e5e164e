"""Fakes and builders shared by the stage 0 tests (test_bootstrap_*.py, test_stage0.py).

A plain module, not a conftest: the tests import what they use; a file that wants a fixture
(``checkout``) wraps the builder here in one.
"""

from __future__ import annotations

import textwrap
import zipfile
from collections.abc import Sequence
from pathlib import Path

from siteboot.bootstrap import build, stamp
from siteboot.bootstrap.build import Bootstrapper
from siteboot.proc import RunResult

REQUIRES = ["supervisor>=4.2", "click>=8.0", 'tomli>=1.1; python_version < "3.11"']


SETUP_CFG = """
[metadata]
name = siteboot
version = attr: siteboot.__version__

[options]
install_requires =
    supervisor>=4.2
    # a comment inside the list
    click>=8.0

    tomli>=1.1; python_version < "3.11"

[options.extras_require]
test =
    pytest
"""


class FakeRunner:
    """Records every command; the python probe answers ``version``, pip/ensurepip as told."""

    def __init__(self, version: str | None = "3.9.18", fail: Sequence[str] = ()) -> None:
        self.version = version
        self.fail = list(fail)  # arguments that make a command fail
        self.calls: list[list[str]] = []

    def __call__(self, cmd: Sequence[str]) -> RunResult:
        cmd = list(cmd)
        self.calls.append(cmd)
        if "-c" in cmd:
            return RunResult(0, f"{self.version}\n") if self.version else RunResult(1, "boom")
        for needle in self.fail:
            if needle in cmd:
                lines = "".join(f"noise {i}\n" for i in range(30))
                return RunResult(1, f"{lines}ERROR: No matching distribution found for {needle}\n")
        return RunResult(0, "ok\n")

    @property
    def pip_calls(self) -> list[list[str]]:
        return [c for c in self.calls if "-c" not in c and "compileall" not in c]


def fake_make_venv(target: Path, prompt: str) -> None:
    """What EnvBuilder leaves: pyvenv.cfg, bin/python, activate and a script with the path."""
    (target / "bin").mkdir(parents=True)
    (target / "lib" / "python3.9" / "site-packages").mkdir(parents=True)
    (target / "pyvenv.cfg").write_text(
        f"home = /usr/bin\nversion = 3.9.18\ncommand = python3 -m venv {target}\n")
    (target / "bin" / "python").write_text("")
    (target / "bin" / "python").chmod(0o755)
    (target / "bin" / "activate").write_text(f'VIRTUAL_ENV="{target}"\nPS1="({prompt}) $PS1"\n')
    (target / "bin" / "pip").write_text(f"#!{target}/bin/python\nimport pip\n")
    (target / "bin" / "pip").chmod(0o755)
    (target / "bin" / "native").write_bytes(b"\x7fELF\0" + str(target).encode())
    (target / "bin" / "python3").symlink_to(target / "bin" / "python")


def make_checkout(tmp_path: Path) -> Path:
    """A checkout of siteboot 1.2.3 (setup.cfg and the package's version) under tmp_path."""
    root = tmp_path / "checkout"
    (root / "siteboot").mkdir(parents=True)
    (root / "siteboot" / "__init__.py").write_text('"""doc"""\n\n__version__ = "1.2.3"\n')
    (root / "setup.cfg").write_text(SETUP_CFG)
    return root


def make(checkout: Path, runner: FakeRunner, *, venv: Path | None = None, ensurepip: bool = True,
         environ: dict[str, str] | None = None, config: dict[str, str] | None = None,
         system_dirs: Sequence[Path] = (), wheelhouse: Path | None = None,
         fetched: dict[str, bytes] | None = None, logs: list[str] | None = None,
         bundled: Sequence[Path] = ()) -> Bootstrapper:
    def fetch(url: str) -> bytes:
        if fetched is None or url not in fetched:
            raise OSError(f"no network in unit tests: {url}")
        return fetched[url]

    builder = Bootstrapper(checkout, venv or checkout / ".venv", runner=runner,
                           wheelhouse=wheelhouse, environ=environ or {},
                           pip_config=config or {}, ensurepip_available=lambda: ensurepip,
                           make_venv=fake_make_venv, fetcher=fetch,
                           bundled_wheels=lambda: list(bundled),
                           log=(logs.append if logs is not None else lambda _m: None))
    builder.system_wheel_dirs = list(system_dirs)
    return builder


def make_wheel(folder: Path, version: str, requires_python: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pip-{version}-py3-none-any.whl"
    headers = f"Metadata-Version: 2.1\nName: pip\nVersion: {version}\n"
    if requires_python:
        headers += f"Requires-Python: {requires_python}\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pip/__init__.py", "")
        archive.writestr(f"pip-{version}.dist-info/METADATA", headers + "\nlong description\n")
    return path


PLANTED = 'print("planted")\n'


REAL = textwrap.dedent("""\
    import os, sys
    print("checkout", sys.flags.isolated, os.environ.get("SITEBOOT_BOOTSTRAPPED"), sys.argv[1:])
""")


def make_isolated_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A real venv whose siteboot.pth points at a fake checkout, and a directory with a planted
    ``siteboot`` package (as a world-writable directory might hold)."""
    checkout = tmp_path / "checkout"
    (checkout / "siteboot").mkdir(parents=True)
    (checkout / "setup.cfg").write_text(SETUP_CFG)
    (checkout / "siteboot" / "__init__.py").write_text('__version__ = "1.2.3"\n')
    (checkout / "siteboot" / "__main__.py").write_text(REAL)
    planted = tmp_path / "planted"
    (planted / "siteboot").mkdir(parents=True)
    (planted / "siteboot" / "__init__.py").write_text("")
    (planted / "siteboot" / "__main__.py").write_text(PLANTED)
    venv = tmp_path / "v"
    build.create_venv(venv, "v")
    version = stamp.venv_cfg_version(venv)
    assert version is not None
    builder = Bootstrapper(checkout, venv, runner=lambda cmd: RunResult(0, ""), environ={},
                           pip_config={})
    builder.install_siteboot(venv, version)  # siteboot.pth and bin/siteboot, as init writes them
    return venv, planted
